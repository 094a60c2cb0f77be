"""The PyTorch batch backend: one CausalLM and a KVCache with one row per slot.

A prefill runs on a one-row view of its slot's cache (the same computation as the single-sequence
TorchBackend). A decode step runs the contiguous span of rows from the lowest to the highest
slot it touches in one (rows, 1) forward; rows inside the span that take no token this step get
a dummy token whose cache write is undone by restoring their length (the entry lies beyond the
row's length, where attention masks it out, and is overwritten by the row's next token).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from pocketlm.common.errors import InputError
from pocketlm.engine.backend import check_room
from pocketlm.model.kv_cache import KVCache
from pocketlm.model.transformer import CausalLM
from pocketlm.tokenizer.tokenizer import Tokenizer


class TorchBatchBackend:
    """BatchBackend over a CausalLM on any device torch drives; logits come back as numpy (n, V)."""

    name = "torch"
    prefill_chunk = None  # a whole prompt per call, as TorchBackend does

    def __init__(
        self,
        model: CausalLM,
        *,
        slots: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        max_len: int | None = None,
    ) -> None:
        first = next(model.parameters())
        self.torch_device = torch.device(device) if device is not None else first.device
        self.dtype = dtype or first.dtype
        if first.device != self.torch_device or first.dtype != self.dtype:
            model = model.to(device=self.torch_device, dtype=self.dtype)
        self.model = model.eval()
        self.config = model.config
        self._device = str(next(model.parameters()).device)
        self._context_length = min(max_len or self.config.max_seq_len, self.config.max_seq_len)
        with torch.inference_mode():
            self.cache = KVCache.allocate(
                self.config, slots, self._context_length, device=self.torch_device, dtype=self.dtype
            )

    @property
    def slots(self) -> int:
        return self.cache.batch

    @property
    def context_length(self) -> int:
        return self._context_length

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def device(self) -> str:
        return self._device

    def position(self, slot: int) -> int:
        """Tokens in the slot's context now."""
        return self.cache.lengths[slot]

    def _view(self, first: int, last: int) -> KVCache:
        """A cache over rows first..last (inclusive) sharing this cache's memory."""
        return KVCache(
            self.cache.k[:, first : last + 1],  # (L, rows, KV, S, hd) view
            self.cache.v[:, first : last + 1],
            list(self.cache.lengths[first : last + 1]),
        )

    def prefill(self, slot: int, token_ids: Sequence[int]) -> np.ndarray:
        """Append prompt tokens to a slot in one forward; float32 logits (V,) after the last."""
        n = len(token_ids)
        if n == 0:
            raise InputError("nothing to prefill: the prompt has no tokens")
        check_room(self.cache.lengths[slot], n, self._context_length)
        view = self._view(slot, slot)
        with torch.inference_mode():
            ids = torch.tensor([list(token_ids)], dtype=torch.long, device=self.torch_device)
            last = torch.tensor([n - 1], dtype=torch.long, device=self.torch_device)  # (1,)
            logits = self.model(ids, view, output_positions=last)  # (1, V)
            out = logits[0].float().cpu().numpy()
        self.cache.lengths[slot] = view.lengths[0]
        return out

    def decode(self, slots: Sequence[int], token_ids: Sequence[int]) -> np.ndarray:
        """One token for each of several slots in one forward; float32 logits (n, V)."""
        if len(set(slots)) != len(slots) or len(slots) != len(token_ids):
            raise InputError("decode needs one token for each of distinct slots")
        for s in slots:
            check_room(self.cache.lengths[s], 1, self._context_length)
        first, last = min(slots), max(slots)
        view = self._view(first, last)
        rows = last - first + 1
        tokens = [0] * rows  # a dummy token for rows that take none this step
        for s, t in zip(slots, token_ids):
            tokens[s - first] = int(t)
        with torch.inference_mode():
            ids = torch.tensor(tokens, dtype=torch.long, device=self.torch_device)[:, None]
            logits = self.model(ids, view)  # (rows, 1, V)
            picked = torch.tensor([s - first for s in slots], device=self.torch_device)
            out = logits[picked, -1].float().cpu().numpy()  # (n, V)
        for s in slots:
            self.cache.lengths[s] += 1
        return out

    def release(self, slot: int) -> None:
        """Forget the slot's context; its cache memory is reused by the next sequence."""
        self.cache.reset_row(slot, 0)


def open_torch_batch_backend(
    model: str | Path,
    *,
    slots: int,
    device: str = "auto",
    precision: str = "auto",
    max_len: int | None = None,
) -> tuple[TorchBatchBackend, Tokenizer]:
    """(TorchBatchBackend, tokenizer) for a model dir or training run on the resolved device."""
    from pocketlm.checkpoint.model_io import load_model
    from pocketlm.common.device import resolve_device, resolve_precision, torch_dtype

    dev = resolve_device(device)
    dtype = torch_dtype(resolve_precision(precision, dev))
    loaded = load_model(model, device=dev, dtype=dtype)
    backend = TorchBatchBackend(loaded.model, slots=slots, device=dev, dtype=dtype, max_len=max_len)
    return backend, loaded.tokenizer
