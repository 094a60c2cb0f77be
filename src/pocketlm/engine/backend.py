"""Forward backends: what the generation engine needs from a model (no torch here).

A backend owns one sequence's context (its KV cache): `prefill` appends prompt tokens in one
pass, `decode` appends one token, both return the logits (vocab,) for the next position as a
numpy float32 array. Implementations: `torch_backend.TorchBackend` (any device PyTorch drives)
and the native C decode loop; batched and continuous-batching backends will drive the model with
several KV cache rows behind the same per-sequence engine logic. A backend may also carry a
short `name` ("torch", "native") that the CLI reports.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from pocketlm.common.errors import InputError


@runtime_checkable
class ForwardBackend(Protocol):
    """One sequence's forward passes with a cached context."""

    @property
    def context_length(self) -> int:
        """The most tokens the context holds (prompt + generated)."""
        ...

    @property
    def vocab_size(self) -> int:
        """Length of the logits vectors."""
        ...

    @property
    def device(self) -> str:
        """Where the forward passes run, e.g. "cpu" or "cuda:0" (the logits are always on the host)."""
        ...

    @property
    def position(self) -> int:
        """Tokens in the context now."""
        ...

    def reset(self) -> None:
        """Forget the context (start a new sequence)."""
        ...

    def prefill(self, token_ids: Sequence[int]) -> np.ndarray:
        """Append tokens to the context in one pass; float32 logits (V,) after the last one."""
        ...

    def decode(self, token_id: int) -> np.ndarray:
        """Append one token; float32 logits (V,) for the next position."""
        ...


def check_room(position: int, n_new: int, context: int) -> None:
    """Raise InputError when n_new more tokens do not fit after `position` in the context."""
    if position + n_new > context:
        raise InputError(
            f"context full: {position} tokens + {n_new} new exceed the context of {context}"
        )
