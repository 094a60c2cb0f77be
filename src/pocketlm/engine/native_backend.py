"""The native CPU backend: the C kernels in `_native` over memory-mapped weights, without torch.

Weights stay in their final layout in model.safetensors (fp32, bf16, int8 rows or int4 groups)
and are mapped, not copied: the process touches only the pages it needs. The engine's prefill /
decode protocol maps onto one C call per forward; the GIL is released while it runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pocketlm.checkpoint.layout import (
    CONFIG_FILE,
    QUANT_FILE,
    WEIGHTS_FILE,
    refuse_pickles,
    resolve_model_dir,
)
from pocketlm.checkpoint.safetensors_mmap import MappedTensors
from pocketlm.common.device import usable_cores
from pocketlm.common.errors import InputError, PocketLMError
from pocketlm.engine.backend import check_room
from pocketlm.model.config import ModelConfig
from pocketlm.tokenizer.tokenizer import Tokenizer

F32, BF16, I8, I4 = 0, 1, 2, 3


class NativeUnavailable(PocketLMError):
    """The native backend cannot run this model here (no compiled extension, unsupported layout)."""


def native_isa() -> str | None:
    """The kernel set the extension would use on this CPU, or None when it is not built."""
    try:
        from pocketlm.engine import _native
    except ImportError:
        return None
    return _native.cpu_isa()


def _matrix(t: MappedTensors, prefix: str, rows: int, cols: int, group: int) -> tuple:
    """(dtype, rows, cols, group, data, scales) for the C side, from `prefix`.weight or .qweight/.scales."""
    if f"{prefix}.weight" in t:
        kind = t.dtype(f"{prefix}.weight")
        if kind not in ("F32", "BF16"):
            raise NativeUnavailable(
                f"{prefix}.weight is {kind}; the native backend reads F32, BF16, int8 or int4 weights"
            )
        w = t.get(f"{prefix}.weight")
        if w.shape != (rows, cols):
            raise NativeUnavailable(f"{prefix}.weight has shape {w.shape}, expected {(rows, cols)}")
        return (F32 if kind == "F32" else BF16, rows, cols, 0, w, None)
    if f"{prefix}.qweight" not in t:
        raise NativeUnavailable(f"no weights for {prefix}")
    q, s = t.get(f"{prefix}.qweight"), t.get(f"{prefix}.scales")
    if t.dtype(f"{prefix}.qweight") == "I8":
        return (I8, rows, cols, 0, q, np.ascontiguousarray(s, dtype=np.float32))
    return (I4, rows, cols, group, q, s.view(np.uint16))


def _vector(t: MappedTensors, name: str) -> np.ndarray | None:
    if name not in t:
        return None
    v = t.get(name)
    return v if v.dtype == np.float32 else v.astype(np.float32)


class NativeBackend:
    """ForwardBackend over the C kernels; logits come back as float32 numpy arrays (V,)."""

    name = "native"

    def __init__(
        self,
        directory: Path,
        config: ModelConfig,
        *,
        threads: int = 0,
        max_len: int | None = None,
        max_batch: int = 64,
        slots: int = 1,
        isa: str = "",
    ) -> None:
        try:
            from pocketlm.engine import _native
        except ImportError as exc:
            raise NativeUnavailable(
                "the native extension is not built (reinstall pocketlm with a C compiler available)"
            ) from exc
        self.config = config
        self.directory = directory
        quant = _read_json(directory / QUANT_FILE) or {"scheme": "none"}
        group = int(quant.get("group_size", 32))
        t = MappedTensors(directory / WEIGHTS_FILE)
        self._tensors = t  # keeps the mapping alive
        c = config
        hd, qd, kvd, ffn = c.resolved_head_dim, c.q_dim, c.kv_dim, c.resolved_ffn_dim
        embed = _matrix(t, "model.embed_tokens", c.vocab_size, c.dim, group)
        head = embed if c.tie_embeddings else _matrix(t, "lm_head", c.vocab_size, c.dim, group)
        layers = []
        for i in range(c.n_layers):
            p = f"model.layers.{i}."
            layers.append(
                (
                    _vector(t, p + "input_layernorm.weight"),
                    _vector(t, p + "post_attention_layernorm.weight"),
                    _vector(t, p + "self_attn.q_proj.bias"),
                    _vector(t, p + "self_attn.k_proj.bias"),
                    _vector(t, p + "self_attn.v_proj.bias"),
                    _matrix(t, p + "self_attn.q_proj", qd, c.dim, group),
                    _matrix(t, p + "self_attn.k_proj", kvd, c.dim, group),
                    _matrix(t, p + "self_attn.v_proj", kvd, c.dim, group),
                    _matrix(t, p + "self_attn.o_proj", c.dim, qd, group),
                    _matrix(t, p + "mlp.gate_proj", ffn, c.dim, group),
                    _matrix(t, p + "mlp.up_proj", ffn, c.dim, group),
                    _matrix(t, p + "mlp.down_proj", c.dim, ffn, group),
                )
            )
        self._context_length = min(max_len or c.max_seq_len, c.max_seq_len)
        self.threads = threads or usable_cores()
        self.slots = slots
        cfg = (
            c.vocab_size,
            c.dim,
            c.n_layers,
            c.n_heads,
            c.n_kv_heads,
            hd,
            ffn,
            self._context_length,
            max_batch,
            slots,
            c.rope_theta,
            c.norm_eps,
        )
        self._model = _native.Model(
            cfg, embed, head, _vector(t, "model.norm.weight"), layers, self.threads, isa
        )
        self.isa = self._model.isa()
        self._logits = np.empty(c.vocab_size, dtype=np.float32)
        self._position = 0

    @property
    def context_length(self) -> int:
        return self._context_length

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def device(self) -> str:
        return "cpu"

    @property
    def position(self) -> int:
        return self._position

    def reset(self) -> None:
        """Forget the context (cache entries are overwritten by position)."""
        self._position = 0

    def _run(self, ids: np.ndarray) -> np.ndarray:
        n = ids.shape[0]
        check_room(self._position, n, self._context_length)
        positions = np.arange(self._position, self._position + n, dtype=np.int32)
        self._model.forward(ids, positions, np.zeros(n, dtype=np.int32), self._logits)
        self._position += n
        return self._logits.copy()

    def prefill(self, token_ids: Any) -> np.ndarray:
        """Append tokens (one call; long prompts run in chunks inside); logits after the last."""
        ids = np.ascontiguousarray(token_ids, dtype=np.int32)
        if ids.size == 0:
            raise InputError("nothing to prefill: the prompt has no tokens")
        return self._run(ids)

    def decode(self, token_id: int) -> np.ndarray:
        """Append one token; logits (V,) for the next position."""
        return self._run(np.array([token_id], dtype=np.int32))

    def extend(self, token_ids: Any) -> np.ndarray:
        """Append tokens; logits (n, V) after each of them (speculative verification)."""
        ids = np.ascontiguousarray(token_ids, dtype=np.int32)
        check_room(self._position, ids.shape[0], self._context_length)
        return self.forward_all(ids, self._position)

    def truncate(self, position: int) -> None:
        """Forget everything after `position` tokens (later writes overwrite the cache)."""
        self._position = min(self._position, max(0, position))

    def forward_all(self, token_ids: Any, start: int = 0) -> np.ndarray:
        """Logits (T, V) for every position of token_ids placed at `start` in slot 0 (tests, eval)."""
        ids = np.ascontiguousarray(token_ids, dtype=np.int32)
        n = ids.shape[0]
        out = np.empty((n, self.config.vocab_size), dtype=np.float32)
        self._model.forward(
            ids, np.arange(start, start + n, dtype=np.int32), np.zeros(n, dtype=np.int32), out, True
        )
        self._position = start + n
        return out

    def prefill_slot(self, slot: int, token_ids: Any, start: int) -> np.ndarray:
        """Continuous batching: append tokens to one slot's sequence at `start`; logits (V,) after the last."""
        ids = np.ascontiguousarray(token_ids, dtype=np.int32)
        n = ids.shape[0]
        out = np.empty(self.config.vocab_size, dtype=np.float32)
        self._model.forward(
            ids,
            np.arange(start, start + n, dtype=np.int32),
            np.full(n, slot, dtype=np.int32),
            out,
            False,
        )
        return out

    def profile(self, enable: bool = True) -> dict[str, float]:
        """Seconds spent per phase (embed, norm, qkv, attention, ffn, lm_head, ...) since the last call."""
        return self._model.profile(enable)

    def forward_batch(self, token_ids: Any, positions: Any, slots: Any) -> np.ndarray:
        """Continuous batching: token i at positions[i] of sequence slots[i]; logits (n, V) for each."""
        ids = np.ascontiguousarray(token_ids, dtype=np.int32)
        out = np.empty((ids.shape[0], self.config.vocab_size), dtype=np.float32)
        self._model.forward(
            ids,
            np.ascontiguousarray(positions, dtype=np.int32),
            np.ascontiguousarray(slots, dtype=np.int32),
            out,
            True,
        )
        return out


def _read_json(path: Path) -> dict | None:
    import json

    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def open_native_backend(
    model_dir: str | Path,
    *,
    threads: int = 0,
    max_len: int | None = None,
    slots: int = 1,
    isa: str = "",
) -> tuple[NativeBackend, Tokenizer]:
    """(backend, tokenizer) for a model dir or training run; raises NativeUnavailable if it cannot run."""
    directory = resolve_model_dir(model_dir)
    refuse_pickles(directory)
    config = ModelConfig.load(directory / CONFIG_FILE)
    return NativeBackend(
        directory, config, threads=threads, max_len=max_len, slots=slots, isa=isa
    ), Tokenizer.load(directory)
