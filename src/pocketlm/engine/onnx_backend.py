"""The onnxruntime backend: an `export onnx` directory behind THE backend protocol, on the CPU.

Each slot keeps its KV cache as numpy arrays, one (1, n_kv_heads, length, head_dim) float32 pair
per layer: the graph's presents of the slot's last run, fed back as its past (no copy: onnxruntime
reads contiguous numpy arrays in place). A prefill or extend is one run on its slot. A decode step
runs every slot it is given in one run: each slot's cache padded to the longest (a copy), the
padding masked out by the graph's attention_mask, each slot's present cut back out (a copy when
padded). The traced graph takes Optimum's left padding (key indices keep their distances, so
sliding windows stay exact); the fused one (interop/onnx_fused.py, onnx_config.json's
"padding_side": "right") right padding: each row's keys at indices 0.., its new token after them.
One run of 4 slots decoded 2.4x the tokens/s of 4 runs (micro-6m shape, 1 thread, contexts of
64 tokens), the copies included.

`truncate` cuts each array to the kept length (copied once, so the next run reads it
contiguously); `release` drops them. Logits come back as float32 from the graph.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pocketlm.checkpoint.json_files import read_json_object
from pocketlm.common.errors import ArtifactError, ConfigError, require
from pocketlm.common.manifest import check_listed_file, read_manifest
from pocketlm.engine.backend import check_append, check_decode, check_slot_count, check_slots
from pocketlm.interop.onnx_files import ONNX_CONFIG_FILE, ONNX_FILE, TEXT_GENERATION
from pocketlm.interop.open_model import ONNX_KIND
from pocketlm.tokenizer.tokenizer import TOKENIZER_FILE


def read_onnx_config(directory: Path) -> dict[str, Any]:
    """The checked onnx_config.json of an `export onnx` directory (its manifest lists the files
    with their sizes and hashes; the graph's bytes are not hashed, as a model's weights are not)."""
    manifest = read_manifest(directory, kind=ONNX_KIND)
    check_listed_file(directory, manifest, ONNX_CONFIG_FILE)
    check_listed_file(directory, manifest, TOKENIZER_FILE)
    check_listed_file(directory, manifest, ONNX_FILE, check_hash=False)
    config = read_json_object(directory / ONNX_CONFIG_FILE)
    for key in ("task", "inputs", "outputs", "vocab_size", "context_length"):
        if key not in config:
            raise ArtifactError(f"{directory / ONNX_CONFIG_FILE}: missing {key!r}")
    return config


def onnx_session(directory: Path, threads: int = 0) -> Any:
    """An onnxruntime CPU session of the directory's model.onnx (its model.onnx.data beside it)
    with `threads` intra-op threads (0: onnxruntime's default, every core)."""
    ort = require("onnxruntime", "onnx", "running an ONNX export")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # idle worker threads sleep instead of spinning between the graph's many small nodes:
    # with 2 threads on 2 shared cores, decode ran 1.5-2.7x faster (micro-6m, small-30m)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(
        str(directory / ONNX_FILE), options, providers=["CPUExecutionProvider"]
    )


class OnnxBackend:
    """The Backend over an exported decoder graph in onnxruntime; logits (V,) or (n, V) float32."""

    name = "onnx"
    prefill_chunk = None  # a whole prompt per run

    def __init__(
        self, directory: str | Path, *, slots: int = 1, threads: int = 0, max_len: int | None = None
    ) -> None:
        """threads: onnxruntime's intra-op threads (0: its default, every core)."""
        check_slot_count(slots)
        require("onnxruntime", "onnx", "the onnx backend")
        self.directory = Path(directory)
        config = read_onnx_config(self.directory)
        if config["task"] != TEXT_GENERATION:
            raise ConfigError(
                f"{self.directory} holds a {config['task']} graph: it generates nothing"
            )
        self.session = onnx_session(self.directory, threads)
        self._check_graph(config)
        self.threads = threads or None
        self.precision = config.get("precision", "fp32")
        # the fused graph reads each row's length from the mask: rows padded after their keys
        self._right = config.get("padding_side", "left") == "right"
        cache = config["cache"]
        self._past_names: list[str] = list(config["inputs"][3:])
        self._empty = np.zeros((1, cache["n_kv_heads"], 0, cache["head_dim"]), dtype=np.float32)
        self._vocab = int(config["vocab_size"])
        context = int(config["context_length"])
        self._context = min(max_len or context, context)
        self._past: list[list[np.ndarray]] = [self._fresh() for _ in range(slots)]
        self._lengths = [0] * slots

    def _check_graph(self, config: dict[str, Any]) -> None:
        """ArtifactError unless the graph's inputs and outputs are those onnx_config.json names."""
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        if inputs != config["inputs"] or outputs != config["outputs"]:
            raise ArtifactError(
                f"{self.directory / ONNX_FILE}: its inputs/outputs ({inputs[:4]}..., "
                f"{outputs[:2]}...) are not those {ONNX_CONFIG_FILE} names"
            )

    def _fresh(self) -> list[np.ndarray]:
        return [self._empty] * len(self._past_names)

    @property
    def slots(self) -> int:
        """How many sequences the backend holds at once."""
        return len(self._lengths)

    @property
    def context_length(self) -> int:
        """The most tokens one slot's context holds."""
        return self._context

    @property
    def vocab_size(self) -> int:
        """Length of the logits vectors."""
        return self._vocab

    @property
    def device(self) -> str:
        """Where the runs happen: onnxruntime's CPU provider."""
        return "cpu"

    def position(self, slot: int) -> int:
        """Tokens in the slot's context now."""
        return self._lengths[slot]

    def prefill(self, slot: int, token_ids: Sequence[int]) -> np.ndarray:
        """Append tokens to a slot in one run; float32 logits (V,) after the last one."""
        check_append(self, slot, len(token_ids))
        return self._append(slot, token_ids)[-1]

    def extend(self, slot: int, token_ids: Sequence[int]) -> np.ndarray:
        """Append tokens to a slot in one run; float32 logits (n, V) after each of them."""
        check_append(self, slot, len(token_ids))
        return self._append(slot, token_ids)

    def decode(self, slots: Sequence[int], token_ids: Sequence[int]) -> np.ndarray:
        """One token for each of distinct slots, all in one run; float32 logits (n, V)."""
        check_decode(self, slots, token_ids)
        members = [int(s) for s in slots]
        lengths = [self._lengths[s] for s in members]
        longest = max(lengths)
        pads = [longest - n for n in lengths]
        ids = np.array([[int(t)] for t in token_ids], dtype=np.int64)  # (n, 1)
        if len(members) == 1:
            past = self._past[members[0]]
        else:  # (n, KV, longest, hd): each slot's cache padded to the longest
            past = [
                _padded([self._past[s][i] for s in members], pads, self._right)
                for i in range(len(self._past_names))
            ]
        mask = np.ones((len(members), longest + 1), dtype=np.int64)  # (n, longest + 1)
        for row, pad in enumerate(pads):  # padding after the new token, or before the past
            if self._right:
                mask[row, lengths[row] + 1 :] = 0
            else:
                mask[row, :pad] = 0
        positions = np.array(lengths, dtype=np.int64)[:, None]  # (n, 1)
        logits, presents = self._run(ids, mask, positions, past)
        for row, (slot, pad) in enumerate(zip(members, pads)):
            keep = slice(0, lengths[row] + 1) if self._right else slice(pad, None)
            kept = [p[row : row + 1, :, keep] for p in presents]  # (1, KV, length + 1, hd)
            self._past[slot] = [np.ascontiguousarray(p) for p in kept] if pad else kept
            self._lengths[slot] += 1
        return logits[:, -1]

    def truncate(self, slot: int, position: int) -> None:
        """Forget the slot's tokens after the first `position` ones."""
        check_slots((slot,), self.slots)
        keep = min(self._lengths[slot], max(0, position))
        if keep < self._lengths[slot]:
            self._past[slot] = [np.ascontiguousarray(p[:, :, :keep]) for p in self._past[slot]]
            self._lengths[slot] = keep

    def release(self, slot: int) -> None:
        """Forget the slot's whole context."""
        check_slots((slot,), self.slots)
        self._past[slot] = self._fresh()
        self._lengths[slot] = 0

    def _append(self, slot: int, token_ids: Sequence[int]) -> np.ndarray:
        """Run tokens on one slot after its context; logits (n, V) after each of them."""
        length = self._lengths[slot]
        ids = np.array([list(token_ids)], dtype=np.int64)  # (1, n)
        total = length + ids.shape[1]
        mask = np.ones((1, total), dtype=np.int64)
        positions = np.arange(length, total, dtype=np.int64)[None]  # (1, n)
        logits, presents = self._run(ids, mask, positions, self._past[slot])
        self._past[slot] = presents
        self._lengths[slot] = total
        return logits[0]

    def _run(
        self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray, past: list[np.ndarray]
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """One graph run of ids (B, T) at positions (B, T) after the past (B, KV, P, hd) each,
        mask (B, P + T) marking real keys: (logits (B, T, V), presents (B, KV, P + T, hd))."""
        feeds = {
            "input_ids": ids,
            "attention_mask": mask,
            "position_ids": positions,
            **dict(zip(self._past_names, past)),
        }
        logits, *presents = self.session.run(None, feeds)
        return logits, presents


def _padded(arrays: list[np.ndarray], pads: list[int], right: bool) -> np.ndarray:
    """(1, KV, n_i, hd) arrays -> (B, KV, longest, hd), zeros after each row's keys (right) or
    before them."""
    first = arrays[0]
    longest = first.shape[2] + pads[0]
    out = np.zeros((len(arrays), first.shape[1], longest, first.shape[3]), dtype=first.dtype)
    for row, (array, pad) in enumerate(zip(arrays, pads)):
        if right:
            out[row, :, : longest - pad] = array[0]
        else:
            out[row, :, pad:] = array[0]
    return out
