"""Resumable micro-batches of packed fine-tuning rows, sharded by rank.

The rows (data/packing.py) are made once; each epoch visits them all in a seeded order. Rows are
dealt out by one global counter as in data/loader.py: a micro-batch on rank r of a world of W
takes rows `consumed + r * batch_size ...` and every rank advances the counter by
W * batch_size, so the rows of one optimizer step depend only on the global batch, and the
state is that counter: resuming is exact, also at another world size or batch split.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pocketlm.common.errors import InputError
from pocketlm.data.packing import PackedRows

Batch = dict[str, np.ndarray]  # input_ids, targets, doc_ids, positions: each (B, ctx); extras


class PackedBatches:
    """Endless micro-batches of rows for one rank; without `packed`, no doc_ids / positions
    (one example per row, padded at its end: plain causal attention computes it exactly)."""

    def __init__(
        self,
        rows: PackedRows,
        batch_size: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        packed: bool = True,
    ) -> None:
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        if not len(rows):
            raise InputError("no training rows: every example was dropped")
        if not 0 <= rank < world_size:
            raise InputError(f"rank {rank} is outside a world of {world_size}")
        self.rows = rows
        self.batch_size, self.seed = batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.packed = packed
        self.num_rows = len(rows)
        self.consumed = 0  # rows dealt out so far, over all ranks
        self._orders: dict[int, np.ndarray] = {}

    @property
    def epoch(self) -> float:
        """Epochs completed (fractional) so far."""
        return self.consumed / self.num_rows

    def _order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            if len(self._orders) >= 2:
                self._orders.pop(min(self._orders))
            rng = np.random.default_rng([self.seed, epoch])
            self._orders[epoch] = rng.permutation(self.num_rows)
        return self._orders[epoch]

    def rows_at(self, first: int, count: int) -> Batch:
        """The rows with global counters first .. first+count-1 (a pure function of the seed)."""
        ks = first + np.arange(count, dtype=np.int64)  # (count,) global row counters
        epochs, positions = np.divmod(ks, self.num_rows)
        index = np.empty(count, dtype=np.int64)
        for epoch in np.unique(epochs):
            sel = epochs == epoch
            index[sel] = self._order(int(epoch))[positions[sel]]
        picked = self.rows.select(index)
        return _batch(picked, self.packed)

    def __iter__(self) -> PackedBatches:
        return self

    def __next__(self) -> Batch:
        batch = self.rows_at(self.consumed + self.rank * self.batch_size, self.batch_size)
        self.consumed += self.batch_size * self.world_size
        return batch

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable position (plus the settings it is valid for)."""
        return {"consumed_rows": self.consumed, "seed": self.seed, "num_rows": self.num_rows}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the position; refuses another data order (other data, seed or packing)."""
        if "consumed_rows" not in state:
            raise InputError(
                "cannot resume the fine-tuning data: the checkpoint has no position "
                f"(saved keys: {', '.join(sorted(state)) or 'none'})"
            )
        for key in ("seed", "num_rows"):
            if state.get(key) != getattr(self, key):
                raise InputError(
                    f"cannot resume the fine-tuning data: {key} was {state.get(key)}, now "
                    f"{getattr(self, key)} (the same data and settings resume the run)"
                )
        self.consumed = int(state["consumed_rows"])


def eval_batches(rows: PackedRows, batch_size: int, *, packed: bool = True) -> list[Batch]:
    """All rows in order, in batches (the last one smaller)."""
    out = []
    for first in range(0, len(rows), batch_size):
        picked = rows.select(np.arange(first, min(first + batch_size, len(rows))))
        out.append(_batch(picked, packed))
    return out


def _batch(picked: PackedRows, packed: bool) -> Batch:
    """Rows as a batch dict: inputs, targets, the rows' extra arrays, doc ids and positions."""
    batch = {"input_ids": picked.input_ids, "targets": picked.targets, **picked.extra}
    if packed:
        batch["doc_ids"], batch["positions"] = picked.doc_ids, picked.positions
    return batch
