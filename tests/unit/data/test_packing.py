"""Packing examples into rows: every example once, whole, with its own positions and document."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pocketlm.data.packing import IGNORE_INDEX, fill_ratio, pack_examples, plan_rows
from pocketlm.data.sft_tokens import SFTTokens


def _example(rng: np.random.Generator, n: int) -> SFTTokens:
    ids = rng.integers(3, 500, size=n).tolist()
    mask = (rng.random(n) < 0.5).tolist()
    return SFTTokens(ids, mask)


def test_best_fit_decreasing_fills_rows():
    assert plan_rows([6, 4, 3, 3, 2, 2], 10) == [[0, 1], [2, 3, 4, 5]]
    assert plan_rows([5, 5, 5], 10) == [[0, 1], [2]]
    assert plan_rows([10, 0, 1], 10) == [[0, 1], [2]]  # an empty example fits a full row
    assert plan_rows([3, 1, 2], 10, packing=False) == [[0], [1], [2]]
    assert plan_rows([], 8) == []
    with pytest.raises(ValueError, match="example 1 takes 11 positions; a row holds 10"):
        plan_rows([3, 11], 10)


@settings(max_examples=200, deadline=None)
@given(
    ctx=st.integers(1, 64),
    data=st.data(),
)
def test_plan_places_each_example_once_within_the_rows(ctx, data):
    lengths = data.draw(st.lists(st.integers(0, ctx), max_size=60))
    rows = plan_rows(lengths, ctx)
    placed = sorted(i for row in rows for i in row)
    assert placed == list(range(len(lengths)))
    totals = [sum(lengths[i] for i in row) for row in rows]
    assert all(t <= ctx for t in totals) and all(row for row in rows)
    # an any-fit packing never leaves two rows that one row could hold
    for a in range(len(totals)):
        for b in range(a + 1, len(totals)):
            assert totals[a] + totals[b] > ctx
    assert plan_rows(lengths, ctx) == rows  # deterministic


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), packing=st.booleans())
def test_rows_hold_each_example_with_restarting_positions(seed, packing):
    rng = np.random.default_rng(seed)
    ctx = 16
    examples = [
        _example(rng, int(n)) for n in rng.integers(1, ctx + 2, size=int(rng.integers(1, 12)))
    ]
    packed = pack_examples(examples, ctx, pad_id=0, packing=packing)
    rows = plan_rows([len(e.ids) - 1 for e in examples], ctx, packing)
    assert packed.input_ids.shape == packed.targets.shape == (len(rows), ctx)
    assert packed.doc_ids.shape == packed.positions.shape == (len(rows), ctx)
    for r, members in enumerate(rows):
        at = 0
        for doc, i in enumerate(members):
            ids, mask = np.array(examples[i].ids), np.array(examples[i].loss_mask)
            n = len(ids) - 1
            window = slice(at, at + n)
            assert packed.input_ids[r, window].tolist() == ids[:-1].tolist()
            assert (
                packed.targets[r, window].tolist()
                == np.where(mask[1:], ids[1:], IGNORE_INDEX).tolist()
            )
            assert (packed.doc_ids[r, window] == doc).all()
            assert packed.positions[r, window].tolist() == list(range(n))
            at += n
        # padding: its own document, nothing learned, positions from 0
        assert (packed.doc_ids[r, at:] == len(members)).all()
        assert (packed.targets[r, at:] == IGNORE_INDEX).all() and (
            packed.input_ids[r, at:] == 0
        ).all()
        assert packed.positions[r, at:].tolist() == list(range(ctx - at))
    targets = sum(int(np.sum(e.loss_mask[1:])) for e in examples)
    assert int((packed.targets != IGNORE_INDEX).sum()) == targets
    used = sum(len(e.ids) - 1 for e in examples)
    assert fill_ratio(examples, packed) == pytest.approx(used / (len(rows) * ctx))


def test_packing_beats_padding_on_short_examples():
    rng = np.random.default_rng(0)
    examples = [_example(rng, int(n)) for n in rng.integers(5, 60, size=200)]
    packed = pack_examples(examples, 256, pad_id=0)
    padded = pack_examples(examples, 256, pad_id=0, packing=False)
    assert len(padded) == 200 and len(packed) < 30
    assert fill_ratio(examples, packed) > 0.95 > 0.2 > fill_ratio(examples, padded)
