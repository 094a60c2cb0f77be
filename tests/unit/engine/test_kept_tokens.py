"""The sampling fast path keeps exactly the tokens the full-vocabulary filters keep, and draws the
tokens the full-vocabulary inverse-CDF draw picks (same seeds), on logits with ties, -inf and
flat or peaked distributions; nucleus candidates grow until the nucleus fits."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pocketlm.engine.kept_tokens import kept_ids, nucleus_positions, softmax64
from pocketlm.engine.sampling import (
    SamplingParams,
    apply_temperature,
    min_p_filter,
    process_logits,
    sample_next,
    top_k_filter,
    top_p_filter,
)


def full_filters(row: np.ndarray, params: SamplingParams) -> np.ndarray:
    """The reference: every filter over the whole vocabulary, in order."""
    out = apply_temperature(row, params.temperature)
    out = top_k_filter(out, params.top_k)
    out = top_p_filter(out, params.top_p)
    return min_p_filter(out, params.min_p)


def full_draws(rows: np.ndarray, params: SamplingParams, seed: int) -> np.ndarray:
    """The full-vocabulary inverse-CDF draw sample_next made before the fast path."""
    scores = np.stack([full_filters(r, params) for r in rows]).astype(np.float64)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    cumulative = np.cumsum(probs, axis=-1)
    u = np.random.default_rng(seed).random(rows.shape[0])[:, None] * cumulative[:, -1:]
    drawn = (cumulative <= u).sum(-1)
    last = probs.shape[-1] - 1 - (probs[:, ::-1] > 0).argmax(-1)
    return np.minimum(drawn, last)


def random_rows(rng: np.random.Generator, vocab: int, kind: str) -> np.ndarray:
    if kind == "ties":  # few distinct values: ties at every threshold
        return rng.integers(-3, 3, size=(3, vocab)).astype(np.float32)
    scale = {"flat": 0.1, "peaked": 8.0}[kind]
    rows = (rng.standard_normal((3, vocab)) * scale).astype(np.float32)
    rows[:, rng.integers(0, vocab, size=vocab // 10)] = -np.inf  # banned tokens
    return rows


PARAMS = [
    SamplingParams(temperature=0.8, top_k=5),
    SamplingParams(temperature=1.0, top_p=0.9),
    SamplingParams(temperature=0.7, top_p=0.5, top_k=40),
    SamplingParams(temperature=1.3, min_p=0.1),
    SamplingParams(temperature=0.9, top_k=100, top_p=0.95, min_p=0.05),
    SamplingParams(temperature=1.0),
]


@pytest.mark.parametrize("kind", ["ties", "flat", "peaked"])
@pytest.mark.parametrize("params", PARAMS, ids=lambda p: f"k{p.top_k}-p{p.top_p}-m{p.min_p}")
def test_fast_filters_and_draws_equal_the_full_vocabulary_ones(params, kind):
    rng = np.random.default_rng(0)
    for vocab in (7, 300, 5000):
        rows = random_rows(rng, vocab, kind)
        expected = np.stack([full_filters(r, params) for r in rows])
        assert np.array_equal(process_logits(rows, params), expected)
        for seed in range(5):
            got = sample_next(rows, params, np.random.default_rng(seed))
            assert got.tolist() == full_draws(rows, params, seed).tolist()


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.floats(-10, 10, allow_nan=False, width=32), min_size=2, max_size=300),
    st.floats(0.01, 0.999),
)
def test_the_nucleus_is_the_full_sorts(values, p):
    row = np.asarray(values, dtype=np.float32)
    probs32 = softmax64(row).astype(np.float32)  # as top_p_filter computes them
    full = np.flatnonzero(np.isfinite(top_p_filter(row, p)))
    assert nucleus_positions(probs32, p).tolist() == full.tolist()


def test_no_filter_keeps_everything_and_a_flat_nucleus_grows_to_the_vocabulary():
    row = np.zeros(10_000, dtype=np.float32)
    assert kept_ids(row, 0, 1.0, 0.0) is None
    full = np.flatnonzero(np.isfinite(top_p_filter(row, 0.999)))
    assert full.shape[0] > 4096  # past 64 -> 512 -> 4096 candidates: the whole vocabulary
    assert kept_ids(row, 0, 0.999, 0.0).tolist() == full.tolist()
