"""Resumable micro-batches of labelled token sequences (sequence classification), sharded by rank.

Every epoch visits all examples in a seeded order. Examples are dealt out by one global counter
as in data/sft_loader.py: a micro-batch on rank r of a world of W takes examples
`consumed + r * batch_size ...` and every rank advances the counter by W * batch_size, so the
examples of one optimizer step depend only on the global batch and the state is that counter:
resuming is exact. A micro-batch is padded on the right to its longest example; its attention
mask marks the real tokens, so the pad id may be any id (a tokenizer without a pad token works).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pocketlm.common.errors import InputError
from pocketlm.tokenizer.tokenizer import Tokenizer

Batch = dict[str, np.ndarray]  # input_ids (B, T) int64, attention_mask (B, T) bool, labels (B,)


@dataclass(frozen=True)
class LabelledTokens:
    """Token sequences and their label ids (indices into the label names), one per example."""

    token_ids: Sequence[Sequence[int]]
    labels: Sequence[int]

    def __post_init__(self) -> None:
        if len(self.token_ids) != len(self.labels):
            raise InputError(f"{len(self.token_ids)} token sequences but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def check(self, n_labels: int, what: str) -> None:
        """InputError naming the first example with no tokens or a label id out of range."""
        for i, (ids, label) in enumerate(zip(self.token_ids, self.labels, strict=True)):
            if not len(ids):
                raise InputError(f"{what} example {i} has no tokens: every text needs one")
            if not 0 <= int(label) < n_labels:
                raise InputError(
                    f"{what} example {i} has label id {label}, outside 0..{n_labels - 1}"
                )

    def truncated(self, max_tokens: int) -> tuple[LabelledTokens, int]:
        """(the examples cut to their first max_tokens tokens, how many were longer)."""
        longer = sum(len(ids) > max_tokens for ids in self.token_ids)
        if not longer:
            return self, 0
        cut = [list(ids[:max_tokens]) for ids in self.token_ids]
        return LabelledTokens(cut, self.labels), longer


def encode_labelled(
    tokenizer: Tokenizer,
    texts: Sequence[str],
    labels: Sequence[str],
    label_names: Sequence[str],
) -> LabelledTokens:
    """Texts tokenized as the classifier takes them at inference and in the server
    (Tokenizer.encode_inputs), with each label's index in `label_names`."""
    index = {name: i for i, name in enumerate(label_names)}
    unknown = sorted(set(labels) - set(index))
    if unknown:
        raise InputError(f"labels {unknown[:5]} are not among the classes {list(label_names)}")
    return LabelledTokens(tokenizer.encode_inputs(texts), [index[label] for label in labels])


def pad_right(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids (B, T), attention_mask (B, T) bool) with each row padded on the right to the
    longest; the mask is true on the real tokens."""
    longest = max(len(s) for s in sequences)
    ids = np.full((len(sequences), longest), pad_id, dtype=np.int64)
    mask = np.zeros((len(sequences), longest), dtype=bool)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = seq
        mask[row, : len(seq)] = True
    return ids, mask


def make_batch(examples: LabelledTokens, index: Sequence[int], pad_id: int) -> Batch:
    """The examples at `index`, padded on the right, with their labels."""
    ids, mask = pad_right([examples.token_ids[i] for i in index], pad_id)
    labels = np.asarray([examples.labels[i] for i in index], dtype=np.int64)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


class ClassifyBatches:
    """Endless micro-batches of labelled examples for one rank, shuffled anew each epoch."""

    def __init__(
        self,
        examples: LabelledTokens,
        batch_size: int,
        *,
        pad_id: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        if not len(examples):
            raise InputError("no training examples")
        if not 0 <= rank < world_size:
            raise InputError(f"rank {rank} is outside a world of {world_size}")
        self.examples, self.pad_id = examples, pad_id
        self.batch_size, self.seed = batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.num_examples = len(examples)
        self.consumed = 0  # examples dealt out so far, over all ranks
        self._orders: dict[int, np.ndarray] = {}

    @property
    def epoch(self) -> float:
        """Epochs completed (fractional) so far."""
        return self.consumed / self.num_examples

    def _order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            if len(self._orders) >= 2:
                self._orders.pop(min(self._orders))
            rng = np.random.default_rng([self.seed, epoch])
            self._orders[epoch] = rng.permutation(self.num_examples)
        return self._orders[epoch]

    def indices_at(self, first: int, count: int) -> np.ndarray:
        """The example indices of global counters first .. first+count-1 (pure in the seed)."""
        ks = first + np.arange(count, dtype=np.int64)  # (count,) global counters
        epochs, positions = np.divmod(ks, self.num_examples)
        index = np.empty(count, dtype=np.int64)
        for epoch in np.unique(epochs):
            sel = epochs == epoch
            index[sel] = self._order(int(epoch))[positions[sel]]
        return index

    def __iter__(self) -> ClassifyBatches:
        return self

    def __next__(self) -> Batch:
        first = self.consumed + self.rank * self.batch_size
        batch = make_batch(self.examples, self.indices_at(first, self.batch_size), self.pad_id)
        self.consumed += self.batch_size * self.world_size
        return batch

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable position (plus the settings it is valid for)."""
        return {"consumed_examples": self.consumed, "seed": self.seed, "num": self.num_examples}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the position; refuses another data order (other data or seed)."""
        if "consumed_examples" not in state:
            raise InputError(
                "cannot resume the classification data: the checkpoint has no position "
                f"(saved keys: {', '.join(sorted(state)) or 'none'})"
            )
        for key, now in (("seed", self.seed), ("num", self.num_examples)):
            if state.get(key) != now:
                raise InputError(
                    f"cannot resume the classification data: {key} was {state.get(key)}, now "
                    f"{now} (the same data and settings resume the run)"
                )
        self.consumed = int(state["consumed_examples"])


def eval_batches(examples: LabelledTokens, batch_size: int, pad_id: int) -> list[Batch]:
    """Every example once, in batches of similar lengths (sorted: little padding)."""
    order = sorted(range(len(examples)), key=lambda i: len(examples.token_ids[i]))
    return [
        make_batch(examples, order[i : i + batch_size], pad_id)
        for i in range(0, len(order), batch_size)
    ]
