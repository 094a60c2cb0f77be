"""Sampling on numpy logits: the filters' exact semantics, greedy, seeded draws and validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pocketlm.common.errors import ConfigError
from pocketlm.engine.sampling import (
    SamplingParams,
    apply_repetition_penalty,
    apply_temperature,
    make_generator,
    min_p_filter,
    process_logits,
    sample_next,
    top_k_filter,
    top_p_filter,
)

logits_lists = st.lists(
    st.floats(min_value=-20, max_value=20, allow_nan=False, width=32), min_size=2, max_size=40
)


def kept(logits: np.ndarray) -> set[int]:
    return set(np.flatnonzero(np.isfinite(logits)).tolist())


def f32(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float32)


@settings(max_examples=60, deadline=None)
@given(logits_lists, st.integers(min_value=1, max_value=50))
def test_top_k_keeps_exactly_k_best(values, k):
    logits = f32(values)
    out = top_k_filter(logits, k)
    assert out.dtype == np.float32 and out.shape == logits.shape
    keep = kept(out)
    assert len(keep) == min(k, len(values))
    worst_kept = min(values[i] for i in keep)
    assert all(values[i] <= worst_kept for i in set(range(len(values))) - keep)
    assert all(out[i] == logits[i] for i in keep)  # kept logits are unchanged


def test_top_k_zero_keeps_all():
    logits = f32([1.0, 2.0, 3.0])
    assert np.array_equal(top_k_filter(logits, 0), logits)


def test_top_k_breaks_ties_by_lower_index_per_row():
    logits = f32([[1.0, 2.0, 2.0, 0.0, 2.0], [5.0, 5.0, 5.0, 5.0, -np.inf]])
    out = top_k_filter(logits, 2)
    assert kept(out[0]) == {1, 2} and kept(out[1]) == {0, 1}
    assert np.array_equal(logits, f32([[1.0, 2.0, 2.0, 0.0, 2.0], [5.0, 5.0, 5.0, 5.0, -np.inf]]))


@settings(max_examples=80, deadline=None)
@given(logits_lists, st.floats(min_value=0.01, max_value=0.999))
def test_top_p_keeps_smallest_set_with_enough_mass(values, p):
    logits = f32(values)
    probs = (np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()).tolist()
    keep = kept(top_p_filter(logits, p))
    mass = sum(probs[i] for i in keep)
    assert mass >= p - 1e-5  # enough mass ...
    assert mass - min(probs[i] for i in keep) < p + 1e-5  # ... and no token could be dropped
    best_dropped = max((probs[i] for i in set(range(len(values))) - keep), default=-1.0)
    assert (
        best_dropped <= min(probs[i] for i in keep) + 1e-6
    )  # the most likely are kept (up to float ties)


def test_top_p_worked_example():
    logits = np.log(f32([0.5, 0.3, 0.15, 0.05]))
    assert kept(top_p_filter(logits, 0.5)) == {0}
    assert kept(top_p_filter(logits, 0.6)) == {0, 1}
    assert kept(top_p_filter(logits, 0.9)) == {0, 1, 2}
    assert kept(top_p_filter(logits, 0.01)) == {0}
    assert kept(top_p_filter(logits, 1.0)) == {0, 1, 2, 3}
    batch = top_p_filter(np.stack([logits, logits[::-1]]), 0.6)  # (2, V): rows apart
    assert kept(batch[0]) == {0, 1} and kept(batch[1]) == {2, 3}


def test_min_p_keeps_tokens_relative_to_the_best():
    logits = np.log(f32([0.5, 0.3, 0.15, 0.05]))
    assert kept(min_p_filter(logits, 0.5)) == {0, 1}  # >= 0.25
    assert kept(min_p_filter(logits, 0.3)) == {0, 1, 2}  # >= 0.15
    assert kept(min_p_filter(logits, 0.0)) == {0, 1, 2, 3}
    assert kept(min_p_filter(logits, 0.99)) == {0}


def test_repetition_penalty_follows_hf():
    logits = f32([2.0, -2.0, 1.0, -1.0, 0.5])
    out = apply_repetition_penalty(logits, [0, 1, 1, 4], 2.0)  # duplicates count once
    np.testing.assert_allclose(out, f32([1.0, -4.0, 1.0, -1.0, 0.25]))
    assert out.dtype == np.float32
    assert logits[0] == 2.0  # the input is left alone
    assert np.array_equal(apply_repetition_penalty(logits, [0, 1], 1.0), logits)
    assert np.array_equal(apply_repetition_penalty(logits, [], 2.0), logits)
    batch = np.stack([logits, logits])  # (2, V) with per-row ids (2, N)
    out2 = apply_repetition_penalty(batch, np.array([[0], [1]]), 2.0)
    assert out2[0, 0] == 1.0 and out2[0, 1] == -2.0 and out2[1, 1] == -4.0 and out2[1, 0] == 2.0
    shared = apply_repetition_penalty(batch, [1], 2.0)  # 1-D ids apply to every row
    assert shared[0, 1] == shared[1, 1] == -4.0


def test_repetition_penalty_matches_transformers():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    logits = np.random.default_rng(0).standard_normal((2, 30)).astype(np.float32)
    ids = np.array([[1, 5, 5, 7], [0, 29, 3, 3]])
    processor = transformers.RepetitionPenaltyLogitsProcessor(1.3)
    hf = processor(torch.from_numpy(ids), torch.from_numpy(logits.copy())).numpy()
    np.testing.assert_allclose(apply_repetition_penalty(logits, ids, 1.3), hf, rtol=0, atol=0)


def test_temperature_scales_and_zero_is_greedy():
    logits = f32([1.0, 3.0, 2.0])
    np.testing.assert_allclose(apply_temperature(logits, 0.5), logits * 2)
    greedy = SamplingParams(temperature=0.0)
    for seed in range(5):
        assert int(sample_next(logits, greedy, make_generator(seed))) == 1
    batch = f32([[1.0, 3.0, 2.0], [5.0, 0.0, 0.0], [0.0, 4.0, 4.0]])
    assert sample_next(batch, greedy).tolist() == [1, 0, 1]  # the first max wins
    with pytest.raises(ConfigError, match="temperature"):
        apply_temperature(logits, 0.0)


def test_greedy_sees_the_penalty_but_ignores_filters():
    logits = f32([3.0, 2.9, 0.0])
    params = SamplingParams(temperature=0, repetition_penalty=2.0, top_k=1)
    assert int(sample_next(logits, params, previous_ids=[0])) == 1
    assert np.array_equal(process_logits(logits, SamplingParams(temperature=0, top_k=1)), logits)


def test_seeded_sampling_reproduces_and_respects_filters():
    logits = np.random.default_rng(1).standard_normal(200).astype(np.float32)
    params = SamplingParams(temperature=1.0, top_k=5)
    draws = [int(sample_next(logits, params, make_generator(7))) for _ in range(3)]
    assert len(set(draws)) == 1
    gen = make_generator(3)
    many = {int(sample_next(logits, params, gen)) for _ in range(200)}
    assert many <= set(np.argsort(-logits)[:5].tolist()) and len(many) > 1
    batch = sample_next(np.stack([logits] * 4), params, make_generator(0))
    assert batch.shape == (4,) and batch.dtype == np.int64
    assert sample_next(logits, params, make_generator(0)).shape == ()
    assert isinstance(make_generator(None), np.random.Generator)


def test_sampling_frequencies_follow_probabilities():
    probs = np.array([0.6, 0.3, 0.1, 0.0])  # a zero-probability token is never drawn
    gen = make_generator(0)
    with np.errstate(divide="ignore"):
        logits = np.broadcast_to(np.log(probs).astype(np.float32), (4000, 4))  # (rows, V)
    counts = np.bincount(sample_next(logits, SamplingParams(temperature=1.0), gen), minlength=4)
    np.testing.assert_allclose(counts / 4000, probs, atol=0.03)
    assert counts[3] == 0


def test_invalid_distributions_raise():
    with pytest.raises(ValueError, match="NaN"):
        sample_next(f32([0.0, np.nan]), SamplingParams(temperature=1.0), make_generator(0))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", -0.1),
        ("temperature", math.nan),
        ("temperature", math.inf),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("top_p", math.nan),
        ("min_p", 1.0),
        ("min_p", -0.1),
        ("repetition_penalty", 0.0),
        ("repetition_penalty", math.inf),
        ("top_k", -1),
        ("top_k", 2.5),
        ("max_new_tokens", 0),
        ("seed", -3),
        ("stop", ("",)),
    ],
)
def test_invalid_params_name_the_field(field, value):
    with pytest.raises(ConfigError, match=field):
        SamplingParams(**{field: value})


def test_params_defaults_and_stop_normalisation():
    p = SamplingParams()
    assert (p.max_new_tokens, p.temperature, p.top_k, p.top_p, p.min_p) == (256, 0.8, 0, 1.0, 0.0)
    assert p.repetition_penalty == 1.0 and p.seed is None and p.stop == ()
    assert SamplingParams(stop="###").stop == ("###",)
    assert SamplingParams(stop=["a", "b"]).stop == ("a", "b")
    with pytest.raises(AttributeError):
        p.temperature = 1.0  # type: ignore[misc]
