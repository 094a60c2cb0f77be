"""THE backend protocol: what generation, speculative decoding and batching need from a model.

A backend holds `slots` independent sequences, each with its own cached context (a KV cache row).
`prefill` appends prompt tokens to one slot, `decode` appends one token to each of several slots
in ONE forward, `extend` appends tokens to one slot and scores every one of them (speculative
verification), `truncate` forgets a slot's tail and `release` its whole context. Logits always come
back to the host as numpy float32. The single-sequence engine and the speculative decoder drive
slot 0; the batching scheduler drives them all. A backend may also offer
`extend_many(slots, token_lists, every=True)`: extend several slots at once, in one forward
where it can (scoring many items' contexts and continuations together); every=False returns
only the logits after each list's last token.
Implementations: `torch_backend.TorchBackend` (any
device PyTorch drives) and `native_backend.NativeBackend` (the C kernels, CPU, no torch). Nothing
here imports torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from pocketlm.common.errors import ConfigError, InputError


@runtime_checkable
class Backend(Protocol):
    """Forward passes for `slots` independent sequences with cached contexts."""

    name: str  # short, for reports: "torch", "native"

    @property
    def slots(self) -> int:
        """How many sequences the backend holds at once."""
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
        """Most prompt tokens a batching step should prefill at once (None: a whole prompt)."""
        ...

    def position(self, slot: int) -> int:
        """Tokens in the slot's context now."""
        ...

    def prefill(self, slot: int, token_ids: Sequence[int]) -> np.ndarray:
        """Append tokens to a slot in one call; float32 logits (V,) after the last one."""
        ...

    def decode(self, slots: Sequence[int], token_ids: Sequence[int]) -> np.ndarray:
        """Append token_ids[i] to slots[i] (distinct slots) in one forward; float32 logits (n, V)."""
        ...

    def extend(self, slot: int, token_ids: Sequence[int]) -> np.ndarray:
        """Append tokens to a slot; float32 logits (n, V) after each of them."""
        ...

    def truncate(self, slot: int, position: int) -> None:
        """Forget the slot's tokens after the first `position` ones."""
        ...

    def release(self, slot: int) -> None:
        """Forget the slot's whole context (its cache is reused by the next sequence)."""
        ...


def check_room(position: int, n_new: int, context: int) -> None:
    """Raise InputError when n_new more tokens do not fit after `position` in the context."""
    if position + n_new > context:
        raise InputError(
            f"context full: {position} tokens + {n_new} new exceed the context of {context}"
        )


def check_slot_count(slots: object) -> None:
    """Raise ConfigError unless `slots` (how many sequences a backend holds) is an integer >= 1."""
    if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
        raise ConfigError(f"slots must be an integer >= 1, got {slots!r}")


def check_slots(slots: Sequence[int], n_slots: int) -> None:
    """Raise InputError unless `slots` are distinct slot indices in 0..n_slots-1."""
    bad = [s for s in slots if not 0 <= s < n_slots]
    if bad:
        raise InputError(f"slot {bad[0]} does not exist: this backend has slots 0..{n_slots - 1}")
    if len(set(slots)) != len(slots):
        raise InputError(f"slots must be distinct, got {list(slots)}")


def check_append(backend: Backend, slot: int, n_new: int) -> None:
    """Raise InputError unless n_new >= 1 tokens fit after the context of `slot` in `backend`."""
    check_slots((slot,), backend.slots)
    if n_new == 0:
        raise InputError("nothing to run: no tokens given (an empty prompt?)")
    check_room(backend.position(slot), n_new, backend.context_length)


def check_decode(backend: Backend, slots: Sequence[int], token_ids: Sequence[int]) -> None:
    """Raise InputError unless there is one token for each of distinct slots and each fits."""
    check_slots(slots, backend.slots)
    if len(slots) == 0 or len(slots) != len(token_ids):
        raise InputError(
            f"decode needs one token for each slot: {len(slots)} slots, {len(token_ids)} tokens"
        )
    for s in slots:
        check_room(backend.position(s), 1, backend.context_length)
