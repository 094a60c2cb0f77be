"""Sampling: the filters' exact semantics, greedy, seeded draws and parameter validation."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pocketlm.common.errors import ConfigError
from pocketlm.runtime.sampling import (
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


def kept(logits: torch.Tensor) -> set[int]:
    return set(torch.nonzero(torch.isfinite(logits)).flatten().tolist())


@settings(max_examples=60, deadline=None)
@given(logits_lists, st.integers(min_value=1, max_value=50))
def test_top_k_keeps_exactly_k_best(values, k):
    logits = torch.tensor(values)
    out = top_k_filter(logits, k)
    keep = kept(out)
    assert len(keep) == min(k, len(values))
    worst_kept = min(values[i] for i in keep)
    assert all(values[i] <= worst_kept for i in set(range(len(values))) - keep)
    assert all(out[i] == logits[i] for i in keep)  # kept logits are unchanged


def test_top_k_zero_keeps_all():
    logits = torch.tensor([1.0, 2.0, 3.0])
    assert torch.equal(top_k_filter(logits, 0), logits)


@settings(max_examples=80, deadline=None)
@given(logits_lists, st.floats(min_value=0.01, max_value=0.999))
def test_top_p_keeps_smallest_set_with_enough_mass(values, p):
    logits = torch.tensor(values)
    probs = torch.softmax(logits, -1).tolist()
    keep = kept(top_p_filter(logits, p))
    mass = sum(probs[i] for i in keep)
    assert mass >= p - 1e-5  # enough mass ...
    assert mass - min(probs[i] for i in keep) < p + 1e-5  # ... and no token could be dropped
    best_dropped = max((probs[i] for i in set(range(len(values))) - keep), default=-1.0)
    assert best_dropped <= min(probs[i] for i in keep)  # the most likely tokens are the ones kept


def test_top_p_worked_example():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    assert kept(top_p_filter(logits, 0.5)) == {0}
    assert kept(top_p_filter(logits, 0.6)) == {0, 1}
    assert kept(top_p_filter(logits, 0.9)) == {0, 1, 2}
    assert kept(top_p_filter(logits, 0.01)) == {0}
    assert kept(top_p_filter(logits, 1.0)) == {0, 1, 2, 3}


def test_min_p_keeps_tokens_relative_to_the_best():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    assert kept(min_p_filter(logits, 0.5)) == {0, 1}  # >= 0.25
    assert kept(min_p_filter(logits, 0.3)) == {0, 1, 2}  # >= 0.15
    assert kept(min_p_filter(logits, 0.0)) == {0, 1, 2, 3}
    assert kept(min_p_filter(logits, 0.99)) == {0}


def test_repetition_penalty_follows_hf():
    logits = torch.tensor([2.0, -2.0, 1.0, -1.0, 0.5])
    out = apply_repetition_penalty(logits, [0, 1, 1, 4], 2.0)  # duplicates count once
    assert torch.allclose(out, torch.tensor([1.0, -4.0, 1.0, -1.0, 0.25]))
    assert torch.equal(apply_repetition_penalty(logits, [0, 1], 1.0), logits)
    assert torch.equal(apply_repetition_penalty(logits, [], 2.0), logits)
    batch = torch.stack([logits, logits])  # (2, V) with per-row ids (2, N)
    out2 = apply_repetition_penalty(batch, torch.tensor([[0], [1]]), 2.0)
    assert out2[0, 0] == 1.0 and out2[0, 1] == -2.0 and out2[1, 1] == -4.0 and out2[1, 0] == 2.0


def test_repetition_penalty_matches_transformers():
    transformers = pytest.importorskip("transformers")
    logits = torch.randn(2, 30, generator=torch.Generator().manual_seed(0))
    ids = torch.tensor([[1, 5, 5, 7], [0, 29, 3, 3]])
    hf = transformers.RepetitionPenaltyLogitsProcessor(1.3)(ids, logits.clone())
    assert torch.allclose(apply_repetition_penalty(logits, ids, 1.3), hf)


def test_temperature_scales_and_zero_is_greedy():
    logits = torch.tensor([1.0, 3.0, 2.0])
    assert torch.allclose(apply_temperature(logits, 0.5), logits * 2)
    greedy = SamplingParams(temperature=0.0)
    for seed in range(5):
        assert int(sample_next(logits, greedy, make_generator(seed))) == 1
    batch = torch.tensor([[1.0, 3.0, 2.0], [5.0, 0.0, 0.0]])
    assert sample_next(batch, greedy).tolist() == [1, 0]
    with pytest.raises(ConfigError, match="temperature"):
        apply_temperature(logits, 0.0)


def test_greedy_sees_the_penalty_but_ignores_filters():
    logits = torch.tensor([3.0, 2.9, 0.0])
    params = SamplingParams(temperature=0, repetition_penalty=2.0, top_k=1)
    assert int(sample_next(logits, params, previous_ids=[0])) == 1
    assert torch.equal(process_logits(logits, SamplingParams(temperature=0, top_k=1)), logits)


def test_seeded_sampling_reproduces_and_respects_filters():
    logits = torch.randn(200, generator=torch.Generator().manual_seed(1))
    params = SamplingParams(temperature=1.0, top_k=5)
    draws = [int(sample_next(logits, params, make_generator(7))) for _ in range(3)]
    assert len(set(draws)) == 1
    gen = make_generator(3)
    many = {int(sample_next(logits, params, gen)) for _ in range(200)}
    assert many <= set(torch.topk(logits, 5).indices.tolist()) and len(many) > 1
    batch = sample_next(torch.stack([logits] * 4), params, make_generator(0))
    assert batch.shape == (4,)


def test_sampling_frequencies_follow_probabilities():
    probs = torch.tensor([0.6, 0.3, 0.1])
    gen = make_generator(0)
    counts = torch.bincount(
        sample_next(torch.log(probs).expand(4000, 3), SamplingParams(temperature=1.0), gen),
        minlength=3,
    )
    assert torch.allclose(counts / 4000, probs, atol=0.03)


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
