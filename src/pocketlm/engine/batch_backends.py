"""Batched forward backends for continuous batching: N independent sequences ("slots") at once.

A batch backend owns one KV cache per slot. `prefill` appends prompt tokens to one slot (in one
or several calls: chunked prefill), `decode` appends one token to each of several slots in ONE
forward and returns their logits (n, V) as numpy float32. `release` forgets a slot's context so
the next request can reuse it. Two implementations: the native C kernels (`forward_batch` over
slots, GIL released) here, and PyTorch over a KVCache with N rows in `torch_batch_backend`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from pocketlm.common.errors import ConfigError, InputError
from pocketlm.engine.backend import check_room
from pocketlm.tokenizer.tokenizer import Tokenizer


@runtime_checkable
class BatchBackend(Protocol):
    """Forward passes for `slots` independent sequences with cached contexts."""

    name: str

    @property
    def slots(self) -> int:
        """How many sequences can be in flight at once."""
        ...

    @property
    def context_length(self) -> int:
        """The most tokens one slot's context holds (prompt + generated)."""
        ...

    @property
    def vocab_size(self) -> int:
        """Length of the logits vectors."""
        ...

    @property
    def device(self) -> str:
        """Where the forward passes run ("cpu", "cuda:0"); logits always come back to the host."""
        ...

    @property
    def prefill_chunk(self) -> int | None:
        """Most prompt tokens to prefill per scheduler step (None: a whole prompt at once)."""
        ...

    def position(self, slot: int) -> int:
        """Tokens in the slot's context now."""
        ...

    def prefill(self, slot: int, token_ids: Sequence[int]) -> np.ndarray:
        """Append prompt tokens to a slot in one call; float32 logits (V,) after the last one."""
        ...

    def decode(self, slots: Sequence[int], token_ids: Sequence[int]) -> np.ndarray:
        """Append token_ids[i] to slots[i] (distinct slots) in one forward; float32 logits (n, V)."""
        ...

    def release(self, slot: int) -> None:
        """Forget the slot's context (its cache is reused by the next sequence)."""
        ...


class NativeBatchBackend:
    """BatchBackend over a NativeBackend opened with `slots` KV caches (C kernels, CPU)."""

    name = "native"

    def __init__(self, native) -> None:  # an engine.native_backend.NativeBackend
        self.native = native
        self._lengths = [0] * int(native.slots)

    slots = property(lambda self: len(self._lengths))
    context_length = property(lambda self: self.native.context_length)
    vocab_size = property(lambda self: self.native.vocab_size)
    device = property(lambda self: "cpu")
    # Multiples of the C side's 64-token chunks: chunked prefill then computes exactly what one
    # call over the whole prompt computes.
    prefill_chunk = property(lambda self: 256)

    def position(self, slot: int) -> int:
        """Tokens in the slot's context now."""
        return self._lengths[slot]

    def prefill(self, slot: int, token_ids: Sequence[int]) -> np.ndarray:
        """Append prompt tokens to a slot; logits (V,) after the last (only it goes through the head)."""
        ids = np.ascontiguousarray(token_ids, dtype=np.int32)
        n = ids.shape[0]
        if n == 0:
            raise InputError("nothing to prefill: the prompt has no tokens")
        start = self._lengths[slot]
        check_room(start, n, self.context_length)
        logits = self.native.prefill_slot(
            slot, ids, start
        )  # only the last token goes through the head
        self._lengths[slot] = start + n
        return logits

    def decode(self, slots: Sequence[int], token_ids: Sequence[int]) -> np.ndarray:
        """One token for each of several slots in one call; logits (n, V)."""
        positions = [self._lengths[s] for s in slots]
        for p in positions:
            check_room(p, 1, self.context_length)
        logits = self.native.forward_batch(token_ids, positions, slots)  # (n, V)
        for s in slots:
            self._lengths[s] += 1
        return logits

    def release(self, slot: int) -> None:
        """Forget the slot's context (entries are overwritten by position)."""
        self._lengths[slot] = 0


def open_batch_backend(
    model: str | Path,
    *,
    slots: int,
    backend: str = "auto",
    device: str = "auto",
    precision: str = "auto",
    threads: int = 0,
    max_len: int | None = None,
) -> tuple[BatchBackend, Tokenizer]:
    """(batch backend, tokenizer) for a model dir or training run, chosen as `load_engine` chooses."""
    from pocketlm.engine.load import BACKENDS, check_native_settings, native_fits, open_native

    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}: use {', '.join(BACKENDS)}")
    if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
        raise ConfigError(f"slots must be an integer >= 1, got {slots!r}")
    if backend == "native":
        check_native_settings(device, precision)
    if backend == "native" or (backend == "auto" and native_fits(device, precision)):
        opened = open_native(
            model, threads=threads, max_len=max_len, required=backend == "native", slots=slots
        )
        if opened is not None:
            return NativeBatchBackend(opened[0]), opened[1]
    from pocketlm.engine.torch_batch_backend import open_torch_batch_backend

    return open_torch_batch_backend(
        model, slots=slots, device=device, precision=precision, max_len=max_len
    )
