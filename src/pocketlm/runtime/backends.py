"""Forward backends: what the generation engine needs from a model, and the PyTorch implementation.

A backend owns one sequence's context (its KV cache): `prefill` appends prompt tokens in one
pass, `decode` appends one token, both return the logits (vocab,) for the next position as a
float32 tensor. A native backend (e.g. a C decode loop) implements the same protocol; batched and
continuous-batching backends will drive the model with several KVCache rows (the model already
masks rows of different lengths) behind the same per-sequence engine logic.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch

from pocketlm.common.errors import InputError
from pocketlm.model.kv_cache import KVCache
from pocketlm.model.transformer import CausalLM


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
    def device(self) -> torch.device:
        """Where the returned logits live (samplers and generators go there too)."""
        ...

    @property
    def position(self) -> int:
        """Tokens in the context now."""
        ...

    def reset(self) -> None:
        """Forget the context (start a new sequence)."""
        ...

    def prefill(self, token_ids: Sequence[int]) -> torch.Tensor:
        """Append tokens to the context in one pass; float32 logits (V,) after the last one."""
        ...

    def decode(self, token_id: int) -> torch.Tensor:
        """Append one token; float32 logits (V,) for the next position."""
        ...


class TorchBackend:
    """ForwardBackend over a CausalLM and a one-row KVCache (allocated on first use)."""

    def __init__(
        self,
        model: CausalLM,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        max_len: int | None = None,
    ) -> None:
        first = next(model.parameters())
        self._device = torch.device(device) if device is not None else first.device
        self.dtype = dtype or first.dtype
        if first.device != self._device or first.dtype != self.dtype:
            model = model.to(device=self._device, dtype=self.dtype)  # moves the module in place
        self.model = model.eval()
        self.config = model.config
        self._context_length = min(max_len or self.config.max_seq_len, self.config.max_seq_len)
        self._cache: KVCache | None = None

    @property
    def context_length(self) -> int:
        return self._context_length

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def position(self) -> int:
        return 0 if self._cache is None else self._cache.lengths[0]

    def reset(self) -> None:
        """Forget the context; the cache memory is kept for the next sequence."""
        if self._cache is not None:
            self._cache.reset_row(0, 0)

    def _room_for(self, n_new: int) -> KVCache:
        if self._cache is None:
            with torch.inference_mode():
                self._cache = KVCache.allocate(
                    self.config, 1, self._context_length, device=self._device, dtype=self.dtype
                )
        if self.position + n_new > self._context_length:
            raise InputError(
                f"context full: {self.position} tokens + {n_new} new exceed the context of {self._context_length}"
            )
        return self._cache

    def prefill(self, token_ids: Sequence[int]) -> torch.Tensor:
        """Append tokens to the context in one forward; float32 logits (V,) after the last one."""
        n = len(token_ids)
        if n == 0:
            raise InputError("nothing to prefill: the prompt has no tokens")
        cache = self._room_for(n)
        with torch.inference_mode():
            ids = torch.tensor([list(token_ids)], dtype=torch.long, device=self._device)  # (1, T)
            last = torch.tensor([n - 1], dtype=torch.long, device=self._device)  # (1,)
            logits = self.model(ids, cache, output_positions=last)  # (1, V)
            return logits[0].float()

    def decode(self, token_id: int) -> torch.Tensor:
        """Append one token; float32 logits (V,) for the next position."""
        cache = self._room_for(1)
        with torch.inference_mode():
            ids = torch.tensor([[token_id]], dtype=torch.long, device=self._device)  # (1, 1)
            logits = self.model(ids, cache)  # (1, 1, V)
            return logits[0, -1].float()
