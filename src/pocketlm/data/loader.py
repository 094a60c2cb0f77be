"""Resumable, seekable batch loader over a token split, sharded by rank.

The split is cut into non-overlapping windows of ctx+1 tokens; each epoch visits all windows in
a seeded permutation. Windows are dealt out by one global counter: a micro-batch on rank r of a
world of W takes the windows `consumed + r * batch_size ...` and every rank then advances the
counter by W * batch_size. So the windows one optimizer step sees across all ranks depend only
on the global batch, not on how it is split into ranks and accumulation steps, and the loader's
whole state is that counter: resuming is exact, also at another world size or batch split.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from pocketlm.common.errors import InputError
from pocketlm.data.token_shards import TokenSplit


class BatchLoader:
    """Yields (inputs, targets), each int64 of shape (batch_size, ctx), for one rank."""

    def __init__(
        self,
        split: TokenSplit,
        batch_size: int,
        ctx: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        shift: bool = True,
        max_windows: int = 0,
    ) -> None:
        """shift: each shuffled epoch moves every window by a seeded offset (off: windows always
        start at multiples of ctx, window j at token j * ctx, as a teacher cache holds them);
        max_windows: read only the first that many windows (0: all)."""
        if batch_size < 1 or ctx < 1:
            raise InputError(f"batch_size and ctx must be >= 1, got {batch_size} and {ctx}")
        if not 0 <= rank < world_size:
            raise InputError(f"rank {rank} is outside a world of {world_size}")
        self.split = split
        self.batch_size = batch_size
        self.ctx = ctx
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        # Each epoch shifts all windows by a seeded offset in [0, ctx): over several epochs the
        # model sees every token in many positions, not the same ctx-aligned windows again.
        self.shift = shuffle and shift
        self.num_windows = (len(split) - 1) // ctx - (1 if self.shift else 0)
        if max_windows:
            self.num_windows = min(self.num_windows, max_windows)
        if self.num_windows < 1:
            raise InputError(
                f"the {split.name} split has {len(split):,} tokens, fewer than one window of ctx+1 = {ctx + 1}",
                hint="use a smaller --ctx or more data",
            )
        self.consumed = 0  # windows dealt out so far, over all ranks
        self._perms: dict[int, tuple[np.ndarray, int]] = {}
        self._offsets = np.arange(ctx + 1, dtype=np.int64)

    @property
    def windows_per_batch(self) -> int:
        """Windows one micro-batch takes over all ranks."""
        return self.batch_size * self.world_size

    @property
    def tokens_per_step(self) -> int:
        """Tokens one micro-batch holds over all ranks."""
        return self.windows_per_batch * self.ctx

    @property
    def epoch(self) -> float:
        """Epochs completed (fractional) so far."""
        return self.consumed / self.num_windows

    def _perm(self, epoch: int) -> tuple[np.ndarray, int]:
        """(window order, token offset) of an epoch."""
        if epoch not in self._perms:
            if len(self._perms) >= 2:
                self._perms.pop(min(self._perms))
            if self.shuffle:
                rng = np.random.default_rng([self.seed, epoch])
                order = rng.permutation(self.num_windows)
                self._perms[epoch] = (order, int(rng.integers(0, self.ctx)) if self.shift else 0)
            else:
                self._perms[epoch] = (np.arange(self.num_windows), 0)
        return self._perms[epoch]

    def starts_at(self, first: int, count: int) -> np.ndarray:
        """(count,) first token of the windows with global counters first .. first+count-1 (a
        pure function of the seed); without shift, window j starts at j * ctx."""
        ks = first + np.arange(count, dtype=np.int64)  # (count,) global window counters
        epochs, positions = np.divmod(ks, self.num_windows)
        starts = np.empty(count, dtype=np.int64)  # (count,) first token of each row
        for epoch in np.unique(epochs):
            sel = epochs == epoch
            order, shift = self._perm(int(epoch))
            starts[sel] = order[positions[sel]] * self.ctx + shift
        return starts

    def windows_at(self, first: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """The windows with global counters first .. first+count-1 (a pure function of the seed)."""
        starts = self.starts_at(first, count)
        rows = np.asarray(
            self.split.tokens[starts[:, None] + self._offsets[None, :]], dtype=np.int64
        )  # (count, ctx+1)
        return rows[:, :-1], rows[:, 1:]

    def batch_at(self, consumed: int) -> tuple[np.ndarray, np.ndarray]:
        """This rank's micro-batch when `consumed` windows have been dealt out before it."""
        return self.windows_at(consumed + self.rank * self.batch_size, self.batch_size)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        return self

    def __next__(self) -> tuple[np.ndarray, np.ndarray]:
        batch = self.batch_at(self.consumed)
        self.consumed += self.windows_per_batch
        return batch

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable position (plus the settings it is valid for)."""
        return {
            "consumed_windows": self.consumed,
            "seed": self.seed,
            "ctx": self.ctx,
            "num_windows": self.num_windows,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the position (any batch size, rank or world size); refuses another data order."""
        if "consumed_windows" not in state:
            raise InputError(
                "cannot resume the data loader: the checkpoint has no position "
                f"(saved keys: {', '.join(sorted(state)) or 'none'})"
            )
        for key in ("seed", "ctx", "num_windows"):
            if state.get(key) != getattr(self, key):
                raise InputError(
                    f"cannot resume the data loader: {key} was {state.get(key)}, now {getattr(self, key)}"
                )
        self.consumed = int(state["consumed_windows"])


def eval_windows(
    split: TokenSplit, batch_size: int, ctx: int, max_tokens: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Deterministic evaluation batches: consecutive windows from the start of the split."""
    n_windows = min((len(split) - 1) // ctx, max(1, max_tokens // ctx))
    offsets = np.arange(ctx + 1, dtype=np.int64)
    for first in range(0, n_windows, batch_size):
        starts = np.arange(first, min(first + batch_size, n_windows), dtype=np.int64) * ctx
        rows = np.asarray(
            split.tokens[starts[:, None] + offsets[None, :]], dtype=np.int64
        )  # (b, ctx+1)
        yield rows[:, :-1], rows[:, 1:]
