"""The llama.cpp backend: a .gguf file (`pocketlm export gguf`, or any llama.cpp file with a
PocketLM tokenizer beside it) behind THE backend protocol, through llama-cpp-python.

One slot: llama-cpp-python's Llama holds one sequence. It is opened with logits_all, so every
evaluated token's logits are kept (Llama.scores, n_ctx x vocab float32: the memory this costs) and
`extend` returns them all; `truncate` moves the sequence's end back (Llama.eval removes the KV
cache entries past it, llama_memory_seq_rm, before its next tokens) and `release` moves it to 0.
swa_full keeps sliding-window layers' whole cache, so a truncate back into the window is exact.
The KV cache is F32 (type_k/type_v), not llama.cpp's default F16, which rounds keys and values
to ~1e-3: the logits then follow PyTorch's (tests/unit/engine/test_gguf_backend.py).

The tokenizer is PocketLM's: the tokenizer.json beside the file if there is one, else the source
model's, from the `<file>.manifest.json` export gguf wrote (llama.cpp tokenizes as `tokenizers`
does: test_gguf_llama_cpp.py; the chat template and stop ids come from the same files).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pocketlm.common.errors import ArtifactError, ConfigError, require
from pocketlm.engine.backend import check_append, check_decode, check_slot_count, check_slots
from pocketlm.tokenizer.tokenizer import TOKENIZER_FILE, Tokenizer

GGML_TYPE_F32 = 0


def gguf_tokenizer(path: Path) -> Tokenizer:
    """PocketLM's tokenizer for a .gguf file: beside it, else its source model's (export gguf's
    manifest); ArtifactError saying where it looked."""
    if (path.parent / TOKENIZER_FILE).is_file():
        return Tokenizer.load(path.parent)
    manifest = path.with_name(path.name + ".manifest.json")
    try:
        parents = json.loads(manifest.read_text(encoding="utf-8")).get("parents") or []
        source = Path(parents[0]["path"])
    except (OSError, ValueError, KeyError, IndexError, TypeError, AttributeError):
        source = None
    if source is None or not (source / TOKENIZER_FILE).is_file():
        raise ArtifactError(
            f"{path}: no {TOKENIZER_FILE} beside it and no source model with one in "
            f"{manifest.name}: copy the model's tokenizer files next to the .gguf file"
        )
    return Tokenizer.load(source)


class GgufBackend:
    """The Backend over one llama.cpp context (one slot); logits (V,) or (n, V) float32."""

    name = "llamacpp"
    prefill_chunk = None

    def __init__(self, path: str | Path, *, threads: int = 0, max_len: int | None = None) -> None:
        """threads: llama.cpp's threads (0: its default). max_len: the context (default: the
        file's training context)."""
        llama_cpp = require("llama_cpp", "llama", "the llamacpp backend")
        self.path = Path(path)
        if not self.path.is_file():
            raise ArtifactError(f"{self.path}: no such GGUF file")
        self.llm = llama_cpp.Llama(
            model_path=str(self.path),
            n_ctx=max_len or 0,  # 0: the training context the file records
            n_threads=threads or None,
            n_threads_batch=threads or None,
            logits_all=True,
            type_k=GGML_TYPE_F32,
            type_v=GGML_TYPE_F32,
            swa_full=True,
            verbose=False,
        )
        self.threads = threads or None
        # llama.cpp pads its context up to a multiple of 256: the file's own context caps it
        trained = _trained_context(self.llm.metadata) or self.llm.n_ctx()
        self._context = min(self.llm.n_ctx(), trained, max_len or trained)

    @property
    def slots(self) -> int:
        """One: a llama.cpp context here holds one sequence."""
        return 1

    @property
    def context_length(self) -> int:
        """The most tokens the slot's context holds."""
        return self._context

    @property
    def vocab_size(self) -> int:
        """Length of the logits vectors."""
        return self.llm.n_vocab()

    @property
    def device(self) -> str:
        """llama.cpp on the CPU."""
        return "cpu"

    def position(self, slot: int) -> int:
        """Tokens in the slot's context now."""
        check_slots((slot,), 1)
        return self.llm.n_tokens

    def prefill(self, slot: int, token_ids: Sequence[int]) -> np.ndarray:
        """Append tokens in one evaluation; float32 logits (V,) after the last one."""
        check_append(self, slot, len(token_ids))
        return self._eval(token_ids)[-1]

    def extend(self, slot: int, token_ids: Sequence[int]) -> np.ndarray:
        """Append tokens in one evaluation; float32 logits (n, V) after each of them."""
        check_append(self, slot, len(token_ids))
        return self._eval(token_ids)

    def decode(self, slots: Sequence[int], token_ids: Sequence[int]) -> np.ndarray:
        """Append one token to slot 0; float32 logits (1, V)."""
        check_decode(self, slots, token_ids)
        return self._eval([int(token_ids[0])])

    def truncate(self, slot: int, position: int) -> None:
        """Forget the tokens after the first `position` (their cache entries go at the next eval)."""
        check_slots((slot,), 1)
        self.llm.n_tokens = min(self.llm.n_tokens, max(0, position))

    def release(self, slot: int) -> None:
        """Forget the whole context."""
        check_slots((slot,), 1)
        self.llm.n_tokens = 0

    def _eval(self, token_ids: Sequence[int]) -> np.ndarray:
        """Evaluate tokens after the context; a copy of their logits (n, V) float32."""
        start = self.llm.n_tokens
        self.llm.eval([int(t) for t in token_ids])
        return np.array(self.llm.scores[start : self.llm.n_tokens], dtype=np.float32)


def _trained_context(metadata: dict[str, str]) -> int | None:
    """The {arch}.context_length the file records, or None."""
    arch = metadata.get("general.architecture")
    value = metadata.get(f"{arch}.context_length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def open_gguf(
    path: str | Path, *, slots: int = 1, threads: int = 0, max_len: int | None = None
) -> tuple[GgufBackend, Tokenizer]:
    """(llama.cpp backend, PocketLM tokenizer) for a .gguf file; one slot only."""
    check_slot_count(slots)
    if slots != 1:
        raise ConfigError(
            f"the llamacpp backend holds one sequence, not {slots}: use --slots 1 "
            "(or serve the model directory on the native backend)"
        )
    path = Path(path)
    tokenizer = gguf_tokenizer(path)  # before the weights: a missing tokenizer fails fast
    backend = GgufBackend(path, threads=threads, max_len=max_len)
    if tokenizer.vocab_size > backend.vocab_size:
        raise ArtifactError(
            f"{path}: tokenizer has {tokenizer.vocab_size} tokens, the file's vocabulary "
            f"{backend.vocab_size}"
        )
    return backend, tokenizer
