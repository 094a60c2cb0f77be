"""Packing fine-tuning examples into fixed-width training rows (pure functions).

An example of n token ids gives n - 1 (input, target) pairs. Packing puts several examples in
one row of `ctx` positions (best-fit decreasing: few, nearly full rows); without packing each
example has a row to itself. Every row comes with, per position: the input id, the target id
(-100 where the mask says the model should not learn it, and on padding), the document it
belongs to (0, 1, ... in the row; the padding at the end is one more document) and its position
within that document, which restarts at 0 for each example. A model that attends only within
a document and takes these positions for its rotary embedding computes exactly what it would
for each example alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from pocketlm.data.sft_tokens import SFTTokens

IGNORE_INDEX = -100  # a target the loss skips (the model's linear_cross_entropy uses the same)


@dataclass(frozen=True)
class PackedRows:
    """Training rows, each array (rows, ctx)."""

    input_ids: np.ndarray  # int64
    targets: np.ndarray  # int64, IGNORE_INDEX where nothing is learned
    doc_ids: np.ndarray  # int32, the example each position belongs to within its row
    positions: np.ndarray  # int32, the position within that example (0 at its first token)
    # more per-position arrays (rows, ctx, ...) that travel with the rows into batches under
    # their names (a teacher's stored targets: data/sparse_targets.pack_targets)
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def select(self, index: np.ndarray) -> PackedRows:
        """The rows at `index` (any shape of row indices over the first axis)."""
        return PackedRows(
            self.input_ids[index], self.targets[index], self.doc_ids[index], self.positions[index],
            {name: array[index] for name, array in self.extra.items()},
        )  # fmt: skip


def plan_rows(lengths: Sequence[int], ctx: int, packing: bool = True) -> list[list[int]]:
    """Which examples (by index) share a row of ctx positions; `lengths` are the examples' input
    positions (ids - 1), each at most ctx. Best-fit decreasing: longest first, each into the row
    it leaves least room in. Without packing, one example per row in the given order."""
    for i, n in enumerate(lengths):
        if not 0 <= n <= ctx:
            raise ValueError(f"example {i} takes {n} positions; a row holds {ctx}")
    if not packing:
        return [[i] for i in range(len(lengths))]
    rows: list[list[int]] = []
    free = _RoomIndex(ctx)  # rows by the room left in them
    for i in sorted(range(len(lengths)), key=lambda k: (-lengths[k], k)):
        n = lengths[i]
        row = free.take_at_least(n)
        if row is None:
            row, room = len(rows), ctx
            rows.append([])
        else:
            row, room = row
        rows[row].append(i)
        free.put(row, room - n)
    return rows


def pack_rows(
    examples: Sequence[SFTTokens], rows: Sequence[Sequence[int]], ctx: int, pad_id: int
) -> PackedRows:
    """The rows of `plan_rows` as arrays: inputs, targets (-100 off the mask), document ids and
    positions that restart at 0 for each example; padding fills each row's end."""
    n_rows = len(rows)
    input_ids = np.full((n_rows, ctx), pad_id, dtype=np.int64)
    targets = np.full((n_rows, ctx), IGNORE_INDEX, dtype=np.int64)
    doc_ids = np.zeros((n_rows, ctx), dtype=np.int32)
    positions = np.zeros((n_rows, ctx), dtype=np.int32)
    for r, members in enumerate(rows):
        at = 0
        for doc, i in enumerate(members):
            ids = np.asarray(examples[i].ids, dtype=np.int64)
            mask = np.asarray(examples[i].loss_mask, dtype=bool)
            n = len(ids) - 1
            if at + n > ctx:
                raise ValueError(f"row {r} holds more than {ctx} positions")
            input_ids[r, at : at + n] = ids[:-1]
            targets[r, at : at + n] = np.where(mask[1:], ids[1:], IGNORE_INDEX)
            doc_ids[r, at : at + n] = doc
            positions[r, at : at + n] = np.arange(n, dtype=np.int32)
            at += n
        doc_ids[r, at:] = len(members)  # the padding is a document of its own
        positions[r, at:] = np.arange(ctx - at, dtype=np.int32)
    return PackedRows(input_ids, targets, doc_ids, positions)


def pack_examples(
    examples: Sequence[SFTTokens], ctx: int, pad_id: int, *, packing: bool = True
) -> PackedRows:
    """Examples (each at most ctx + 1 ids) as packed (or, without packing, padded) rows."""
    rows = plan_rows([len(e.ids) - 1 for e in examples], ctx, packing)
    return pack_rows(examples, rows, ctx, pad_id)


def fill_ratio(examples: Sequence[SFTTokens], rows: PackedRows) -> float:
    """Share of the rows' positions that hold the examples' tokens (the rest is padding)."""
    used = sum(len(e.ids) - 1 for e in examples)
    return used / rows.input_ids.size if len(rows) else 0.0


class _RoomIndex:
    """Rows by the room they have left: the row with the least room of at least n, in O(log ctx)
    (a Fenwick tree of row counts per room, with a stack of rows per room)."""

    def __init__(self, ctx: int) -> None:
        self.size = ctx + 1  # room 0..ctx
        self.tree = [0] * (self.size + 1)
        self.stacks: list[list[int]] = [[] for _ in range(self.size)]

    def put(self, row: int, room: int) -> None:
        self.stacks[room].append(row)
        k = room + 1
        while k <= self.size:
            self.tree[k] += 1
            k += k & -k

    def take_at_least(self, n: int) -> tuple[int, int] | None:
        """(row, room) of a row with the least room >= n, removed; None when no row has it."""
        below = self._count(n)  # rows with room < n
        if below == self._count(self.size):
            return None
        room = self._find(below + 1)  # the smallest room with more rows up to it than `below`
        row = self.stacks[room].pop()
        k = room + 1
        while k <= self.size:
            self.tree[k] -= 1
            k += k & -k
        return row, room

    def _count(self, rooms: int) -> int:
        """Rows with room < rooms."""
        total, k = 0, rooms
        while k > 0:
            total += self.tree[k]
            k -= k & -k
        return total

    def _find(self, rank: int) -> int:
        """The smallest room whose cumulative count reaches rank."""
        pos, step = 0, 1 << self.size.bit_length()
        while step:
            nxt = pos + step
            if nxt <= self.size and self.tree[nxt] < rank:
                pos = nxt
                rank -= self.tree[nxt]
            step >>= 1
        return pos  # tree index pos + 1 is room pos
