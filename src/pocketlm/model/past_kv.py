"""A functional KV cache for graph export (ONNX): past keys/values come in as tensors and each
layer's past + new keys/values come out as `presents`; nothing is written in place.

`CausalLM.forward(input_ids, PastKV(...), positions=position_ids)` then computes what Hugging Face
Optimum's decoder graphs compute: rotary positions from `positions` (B, T); the new tokens' cache
indices follow the past (P .. P + T - 1); key j is visible to the query at index i iff j <= i (and
i - j < window on a sliding layer) and key_mask[b, j] (Optimum's attention_mask over past + new,
so left-padded rows batch together). Every branch depends on shapes only, never on a Python int
read from the data, so one traced graph serves every batch, sequence and past length, the empty
past included. A query always sees its own key, so a padding query's row stays finite (its
output is never read) instead of a softmax over nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class PastKV:
    """Per-layer past (keys, values) (B, KV, P, hd) in; `presents` (B, KV, P + T, hd) out."""

    def __init__(
        self, past: Sequence[tuple[torch.Tensor, torch.Tensor]], key_mask: torch.Tensor
    ) -> None:
        """past: one (keys, values) pair per layer; key_mask (B, P + T) bool, true on real keys."""
        self.past = list(past)
        self.key_mask = key_mask
        self.presents: list[tuple[torch.Tensor, torch.Tensor]] = [
            (k, v) for k, v in self.past
        ]  # replaced layer by layer as the forward writes
        # window (0: none) -> the (B, 1, T, S) visibility the first layer of that kind built
        self.masks: dict[int, torch.Tensor] = {}

    def uniform_length(self) -> None:
        """None: the model takes the general path (explicit positions and mask) for any past."""
        return None

    def positions(self, n_new: int, device: torch.device) -> torch.Tensor:
        """(1, n_new) int64 cache indices of the new tokens: past length .. past length + n - 1."""
        start = self.past[0][0].shape[2]
        return (torch.arange(n_new, device=device) + start)[None]  # (1, T)

    def write(
        self,
        layer: int,
        k_new: torch.Tensor,
        v_new: torch.Tensor,
        positions: torch.Tensor,
        uniform: int | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Past + new keys and values (B, KV, P + T, hd) of one layer, kept as its present."""
        k_past, v_past = self.past[layer]
        k_all = torch.cat([k_past.to(k_new.dtype), k_new], dim=2)
        v_all = torch.cat([v_past.to(v_new.dtype), v_new], dim=2)
        self.presents[layer] = (k_all, v_all)
        return k_all, v_all

    def advance(self, n_new: int) -> None:
        """Nothing to advance: the caller keeps the presents as the next call's past."""

    def visible(self, mask: torch.Tensor, query_index: torch.Tensor) -> torch.Tensor:
        """mask (B or 1, 1, T, S) & the key mask, each query seeing its own key -> (B, 1, T, S)."""
        n_keys = mask.shape[-1]
        key_index = torch.arange(n_keys, device=mask.device)  # (S,)
        own = key_index[None, None, None, :] == query_index[:, None, :, None]  # (1, 1, T, S)
        return (mask & self.key_mask[:, None, None, :]) | own
