"""The PyTorch forward backend: a CausalLM and a one-row KVCache on any device torch drives."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from pocketlm.common.errors import InputError
from pocketlm.engine.backend import check_room
from pocketlm.model.kv_cache import KVCache
from pocketlm.model.transformer import CausalLM


class TorchBackend:
    """ForwardBackend over a CausalLM and a one-row KVCache (allocated on first use)."""

    name = "torch"

    def __init__(
        self,
        model: CausalLM,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        max_len: int | None = None,
    ) -> None:
        first = next(model.parameters())
        self.torch_device = torch.device(device) if device is not None else first.device
        self.dtype = dtype or first.dtype
        if first.device != self.torch_device or first.dtype != self.dtype:
            model = model.to(device=self.torch_device, dtype=self.dtype)  # moves it in place
        self.model = model.eval()
        self.config = model.config
        self._device = str(next(model.parameters()).device)  # with its index: "cuda:0"
        self._context_length = min(max_len or self.config.max_seq_len, self.config.max_seq_len)
        self._cache: KVCache | None = None

    @property
    def context_length(self) -> int:
        return self._context_length

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def device(self) -> str:
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
                    self.config, 1, self._context_length, device=self.torch_device, dtype=self.dtype
                )
        check_room(self.position, n_new, self._context_length)
        return self._cache

    def prefill(self, token_ids: Sequence[int]) -> np.ndarray:
        """Append tokens to the context in one forward; float32 logits (V,) after the last one."""
        n = len(token_ids)
        if n == 0:
            raise InputError("nothing to prefill: the prompt has no tokens")
        cache = self._room_for(n)
        with torch.inference_mode():
            ids = torch.tensor(
                [list(token_ids)], dtype=torch.long, device=self.torch_device
            )  # (1, T)
            last = torch.tensor([n - 1], dtype=torch.long, device=self.torch_device)  # (1,)
            logits = self.model(ids, cache, output_positions=last)  # (1, V)
            return logits[0].float().cpu().numpy()

    def decode(self, token_id: int) -> np.ndarray:
        """Append one token; float32 logits (V,) for the next position."""
        cache = self._room_for(1)
        with torch.inference_mode():
            ids = torch.tensor([[token_id]], dtype=torch.long, device=self.torch_device)  # (1, 1)
            logits = self.model(ids, cache)  # (1, 1, V)
            return logits[0, -1].float().cpu().numpy()

    def extend(self, token_ids: Sequence[int]) -> np.ndarray:
        """Append tokens; float32 logits (n, V) after each of them (speculative verification)."""
        n = len(token_ids)
        cache = self._room_for(n)
        with torch.inference_mode():
            ids = torch.tensor(
                [list(token_ids)], dtype=torch.long, device=self.torch_device
            )  # (1, n)
            return self.model(ids, cache)[0].float().cpu().numpy()  # (n, V)

    def truncate(self, position: int) -> None:
        """Forget everything after `position` tokens (masked by position, overwritten later)."""
        if self._cache is not None:
            self._cache.reset_row(0, min(self.position, max(0, position)))
