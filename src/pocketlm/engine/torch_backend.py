"""The PyTorch backend: one CausalLM and a KVCache with one row per slot, on any device torch drives.

A prefill or extend runs on a one-row view of its slot's cache. A decode step runs the contiguous
span of rows from the lowest to the highest slot it touches in one (rows, 1) forward; rows inside
the span that take no token this step get a dummy token whose cache write is undone by restoring
their length (the entry lies beyond the row's length, where attention masks it out, and is
overwritten by the row's next token). A full row has no room for that dummy write, so it splits
the step into one forward per span on either side of it.

A longrope model (Phi-3) rotates with its short factors while a sequence fits its original context
and with its long factors beyond (model/rope.py). When a slot's context first grows past that
boundary, its cached keys were rotated for the short context: the slot is run again from its
first token, as transformers' generate does (Phi3ForCausalLM.prepare_inputs_for_generation), so
every step's logits are those of one full forward over the sequence so far.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from pocketlm.common.errors import InputError
from pocketlm.engine.backend import check_append, check_decode, check_slot_count, check_slots
from pocketlm.model.kv_cache import KVCache
from pocketlm.model.multi_lora import NO_ADAPTER, AdapterRows
from pocketlm.model.transformer import CausalLM


class TorchBackend:
    """The Backend over a CausalLM; logits come back as numpy float32 (V,) or (n, V)."""

    name = "torch"
    prefill_chunk = None  # a whole prompt per call

    def __init__(
        self,
        model: CausalLM,
        *,
        slots: int = 1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        max_len: int | None = None,
        adapter_rows: AdapterRows | None = None,
    ) -> None:
        """adapter_rows: the model carries several adapters (model.multi_lora): each slot runs
        the one use_adapter() gave it (none by default)."""
        check_slot_count(slots)
        first = next(model.parameters())
        self.torch_device = torch.device(device) if device is not None else first.device
        self.dtype = dtype or first.dtype
        if first.device != self.torch_device or first.dtype != self.dtype:
            model = model.to(device=self.torch_device, dtype=self.dtype)  # moves it in place
        self.model = model.eval()
        self.config = model.config
        self._device = str(next(model.parameters()).device)  # with its index: "cuda:0"
        self._context_length = min(max_len or self.config.max_seq_len, self.config.max_seq_len)
        with torch.inference_mode():
            self.cache = KVCache.allocate(
                self.config, slots, self._context_length, device=self.torch_device, dtype=self.dtype
            )
        # longrope: the boundary past which a slot is recomputed, and each slot's tokens for it
        longrope = self.config.rope_scaling == "longrope"
        self._rope_boundary = self.config.rope_original_max_len if longrope else None
        self._tokens: list[list[int]] = [[] for _ in range(slots)]
        self._adapter_rows = adapter_rows
        self._slot_adapter = [NO_ADAPTER] * slots

    def use_adapter(self, slot: int, adapter: int) -> None:
        """Run `slot` with adapter index `adapter` (NO_ADAPTER: the base) from its next token."""
        check_slots((slot,), self.slots)
        if adapter != NO_ADAPTER and self._adapter_rows is None:
            raise InputError("this backend serves no adapters")
        self._slot_adapter[slot] = adapter

    def _select(self, first: int, last: int) -> None:
        if self._adapter_rows is not None:  # rows first..last of the next forward
            self._adapter_rows.rows = self._slot_adapter[first : last + 1]

    @property
    def slots(self) -> int:
        """How many sequences the backend holds at once."""
        return self.cache.batch

    @property
    def context_length(self) -> int:
        """The most tokens one slot's context holds."""
        return self._context_length

    @property
    def vocab_size(self) -> int:
        """Length of the logits vectors."""
        return self.config.vocab_size

    @property
    def device(self) -> str:
        """Where the forward passes run, with its index ("cpu", "cuda:0")."""
        return self._device

    def position(self, slot: int) -> int:
        """Tokens in the slot's context now."""
        return self.cache.lengths[slot]

    def prefill(self, slot: int, token_ids: Sequence[int]) -> np.ndarray:
        """Append tokens to a slot in one forward; float32 logits (V,) after the last one."""
        check_append(self, slot, len(token_ids))
        return self._append(slot, token_ids, every=False)

    def extend(self, slot: int, token_ids: Sequence[int]) -> np.ndarray:
        """Append tokens to a slot in one forward; float32 logits (n, V) after each of them."""
        check_append(self, slot, len(token_ids))
        return self._append(slot, token_ids, every=True)

    def extend_many(
        self, slots: Sequence[int], token_lists: Sequence[Sequence[int]], *, every: bool = True
    ) -> list[np.ndarray]:
        """token_lists[i] appended to slots[i] (distinct slots) in one (rows, T) forward over the
        span of rows they touch, each row at its own positions (right-padded with dummy tokens
        whose cache writes are undone by restoring the lengths, as decode's); float32 logits
        (n_i, V) after each token of each (every=False: (V,) after each list's last token). One
        call each where a row of the span lacks room for the padding or a longrope slot crosses
        its boundary."""
        slots = [int(s) for s in slots]
        check_slots(slots, self.slots)
        if len(slots) != len(token_lists):
            raise InputError(f"{len(slots)} slots but {len(token_lists)} token lists")
        for s, ids in zip(slots, token_lists, strict=True):
            check_append(self, s, len(ids))
        width = max(len(t) for t in token_lists)
        first, last = min(slots), max(slots)
        lengths = list(self.cache.lengths)
        if any(lengths[r] + width > self._context_length for r in range(first, last + 1)) or any(
            self._crosses_boundary(s, len(t)) for s, t in zip(slots, token_lists, strict=True)
        ):
            one = self.extend if every else self.prefill
            return [one(s, t) for s, t in zip(slots, token_lists, strict=True)]
        tokens = np.zeros((last - first + 1, width), dtype=np.int64)  # (rows, T) dummies: 0
        for s, t in zip(slots, token_lists, strict=True):
            tokens[s - first, : len(t)] = t
        view = self._view(first, last)
        self._select(first, last)
        with torch.inference_mode():
            ids = torch.from_numpy(tokens).to(self.torch_device)
            if every:
                logits = self.model(ids, view)  # (rows, T, V)
                out = [
                    logits[s - first, : len(t)].float().cpu().numpy()
                    for s, t in zip(slots, token_lists, strict=True)
                ]
            else:  # only each row's last real token goes through the head
                size = dict(zip(slots, (len(t) for t in token_lists), strict=True))
                ends = [size.get(r, 1) - 1 for r in range(first, last + 1)]
                at = torch.tensor(ends, dtype=torch.long, device=self.torch_device)  # (rows,)
                logits = self.model(ids, view, output_positions=at)  # (rows, V)
                out = [logits[s - first].float().cpu().numpy() for s in slots]
        for r in range(first, last + 1):  # undo the dummies: each row keeps what it was given
            self.cache.lengths[r] = lengths[r]
        for s, t in zip(slots, token_lists, strict=True):
            self.cache.lengths[s] += len(t)
            self._tokens[s] += [int(x) for x in t]
        return out

    def decode(self, slots: Sequence[int], token_ids: Sequence[int]) -> np.ndarray:
        """One token for each of distinct slots, one forward per span; float32 logits (n, V)."""
        check_decode(self, slots, token_ids)
        token_of = {int(s): int(t) for s, t in zip(slots, token_ids)}
        out = np.empty((len(slots), self.vocab_size), dtype=np.float32)
        row_of = {int(s): i for i, s in enumerate(slots)}
        for s in [s for s in token_of if self._crosses_boundary(s, 1)]:
            out[row_of[s]] = self._append(s, [token_of.pop(s)], every=False)
        if not token_of:
            return out
        for span in self._spans(sorted(token_of)):
            logits = self._decode_span(span, [token_of[s] for s in span])  # (len(span), V)
            out[[row_of[s] for s in span]] = logits
        return out

    def truncate(self, slot: int, position: int) -> None:
        """Forget the slot's tokens after the first `position` (masked by position, overwritten later)."""
        check_slots((slot,), self.slots)
        self.cache.reset_row(slot, min(self.cache.lengths[slot], max(0, position)))
        del self._tokens[slot][self.cache.lengths[slot] :]

    def release(self, slot: int) -> None:
        """Forget the slot's context; its cache memory is reused by the next sequence."""
        check_slots((slot,), self.slots)
        self.cache.reset_row(slot, 0)
        self._tokens[slot] = []
        self._slot_adapter[slot] = NO_ADAPTER

    def _view(self, first: int, last: int) -> KVCache:
        """A cache over rows first..last (inclusive) sharing this cache's memory."""
        return KVCache(
            self.cache.k[:, first : last + 1],  # (L, rows, KV, S, hd) view
            self.cache.v[:, first : last + 1],
            list(self.cache.lengths[first : last + 1]),
        )

    def _crosses_boundary(self, slot: int, n_new: int) -> bool:
        """Whether n_new tokens take a slot holding a short context past longrope's boundary."""
        at = self.cache.lengths[slot]
        return self._rope_boundary is not None and 0 < at <= self._rope_boundary < at + n_new

    def _append(self, slot: int, token_ids: Sequence[int], *, every: bool) -> np.ndarray:
        """Run tokens on one slot's row: logits (n, V) after each token if `every`, else (V,)."""
        n = len(token_ids)
        run = list(token_ids)
        if self._crosses_boundary(slot, n):  # recompute the whole context with the long factors
            run = self._tokens[slot] + run
            self.cache.reset_row(slot, 0)
            self._tokens[slot] = []
        view = self._view(slot, slot)
        self._select(slot, slot)
        with torch.inference_mode():
            ids = torch.tensor([run], dtype=torch.long, device=self.torch_device)
            if every:
                logits = self.model(ids, view)[0, len(run) - n :]  # (1, len, V) -> (n, V)
            else:
                last = torch.tensor([len(run) - 1], dtype=torch.long, device=self.torch_device)
                logits = self.model(ids, view, output_positions=last)[0]  # (1, V) -> (V,)
            out = logits.float().cpu().numpy()
        self.cache.lengths[slot] = view.lengths[0]
        self._tokens[slot] += run
        return out

    def _spans(self, slots: list[int]) -> list[list[int]]:
        """Sorted slots in groups whose row span holds no full row that takes no token."""
        spans = [[slots[0]]]
        for s in slots[1:]:
            idle = range(spans[-1][-1] + 1, s)
            if any(self.cache.lengths[r] >= self._context_length for r in idle):
                spans.append([s])
            else:
                spans[-1].append(s)
        return spans

    def _decode_span(self, slots: list[int], token_ids: list[int]) -> np.ndarray:
        """One (rows, 1) forward over rows slots[0]..slots[-1]; logits (len(slots), V)."""
        first, last = slots[0], slots[-1]
        view = self._view(first, last)
        tokens = [0] * (last - first + 1)  # a dummy token for rows that take none this step
        for s, t in zip(slots, token_ids):
            tokens[s - first] = t
        self._select(first, last)
        with torch.inference_mode():
            ids = torch.tensor(tokens, dtype=torch.long, device=self.torch_device)[:, None]
            logits = self.model(ids, view)  # (rows, 1, V)
            picked = torch.tensor([s - first for s in slots], device=self.torch_device)
            out = logits[picked, -1].float().cpu().numpy()  # (n, V)
        for s, t in zip(slots, token_ids):
            self.cache.lengths[s] += 1
            self._tokens[s].append(t)
        return out
