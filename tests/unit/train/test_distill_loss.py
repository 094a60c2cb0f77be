"""Distillation losses against their textbook definitions."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pocketlm.train.distill_loss import (
    distill_loss,
    hidden_cosine_loss,
    sparse_forward_kl,
    top_k_logprobs,
)

G = torch.Generator().manual_seed(0)
S = torch.randn(3, 5, 11, generator=G, dtype=torch.float64)
T = torch.randn(3, 5, 11, generator=G, dtype=torch.float64) * 2


def _probs(logits: torch.Tensor, temp: float = 1.0) -> torch.Tensor:
    return torch.softmax(logits / temp, dim=-1)


def _kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return (p * (p.log() - q.log())).sum(-1)


@pytest.mark.parametrize("temp", [1.0, 2.0])
def test_forward_and_reverse_kl_match_their_definitions(temp: float) -> None:
    p_s, p_t = _probs(S, temp), _probs(T, temp)
    got = distill_loss(S, T, "forward_kl", temperature=temp)
    torch.testing.assert_close(got.double(), _kl(p_t, p_s) * temp**2, rtol=1e-5, atol=1e-6)
    ref = F.kl_div(F.log_softmax(S / temp, -1), F.log_softmax(T / temp, -1), log_target=True,
                   reduction="none").sum(-1)  # fmt: skip
    torch.testing.assert_close(got.double(), ref * temp**2, rtol=1e-5, atol=1e-6)
    got_r = distill_loss(S, T, "reverse_kl", temperature=temp)
    torch.testing.assert_close(got_r.double(), _kl(p_s, p_t) * temp**2, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
def test_jsd_matches_its_definition_and_is_symmetric_at_one_half(beta: float) -> None:
    p_s, p_t = _probs(S), _probs(T)
    m = beta * p_t + (1 - beta) * p_s
    want = beta * _kl(p_t, m) + (1 - beta) * _kl(p_s, m)
    torch.testing.assert_close(
        distill_loss(S, T, "jsd", beta=beta).double(), want, rtol=1e-5, atol=1e-6
    )
    if beta == 0.5:
        torch.testing.assert_close(distill_loss(S, T, "jsd"), distill_loss(T, S, "jsd"))
        assert float(distill_loss(S, T, "jsd").max()) <= math.log(2) + 1e-6


def test_tv_is_half_the_l1_distance_and_every_loss_is_zero_on_equal_inputs() -> None:
    want = 0.5 * (_probs(S) - _probs(T)).abs().sum(-1)
    torch.testing.assert_close(distill_loss(S, T, "tv").double(), want, rtol=1e-5, atol=1e-6)
    for kind in ("forward_kl", "reverse_kl", "jsd", "tv"):
        assert float(distill_loss(S, S, kind).abs().max()) < 1e-6, kind


def test_gradients_flow_to_the_student_only() -> None:
    s = S.float().clone().requires_grad_()
    t = T.float().clone().requires_grad_()
    distill_loss(s, t.detach(), "forward_kl").sum().backward()
    assert s.grad is not None and float(s.grad.abs().sum()) > 0


def test_bad_inputs_are_named() -> None:
    with pytest.raises(ValueError, match="vocabulary"):
        distill_loss(S, T[..., :10])
    with pytest.raises(ValueError, match="unknown distillation loss"):
        distill_loss(S, T, "mse")
    with pytest.raises(ValueError, match="temperature"):
        distill_loss(S, T, temperature=0)
    with pytest.raises(ValueError, match="beta"):
        distill_loss(S, T, "jsd", beta=1.0)


def test_sparse_kl_with_every_token_listed_is_the_full_kl() -> None:
    log_t = torch.log_softmax(T, -1)
    ids = torch.arange(11).expand(3, 5, 11)
    got = sparse_forward_kl(S, ids, log_t)
    torch.testing.assert_close(got.double(), distill_loss(S, T).double(), rtol=1e-5, atol=1e-6)


def test_sparse_kl_keeps_the_unlisted_mass_as_one_outcome() -> None:
    log_t = torch.log_softmax(T, -1)
    top = log_t.topk(4, dim=-1)
    got = sparse_forward_kl(S, top.indices, top.values)
    p_s, p_t = _probs(S), _probs(T)
    pt_k, ps_k = p_t.gather(-1, top.indices), p_s.gather(-1, top.indices)
    t_rest, s_rest = 1 - pt_k.sum(-1), 1 - ps_k.sum(-1)
    want = (pt_k * (pt_k.log() - ps_k.log())).sum(-1) + t_rest * (t_rest.log() - s_rest.log())
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    assert bool((got >= -1e-6).all())  # a KL over k + 1 outcomes: never negative


def test_top_k_logprobs_are_the_most_likely_tokens_rounded_to_fp16() -> None:
    ids, logprobs = top_k_logprobs(T.float(), 4)
    assert ids.shape == logprobs.shape == (3, 5, 4) and logprobs.dtype == torch.float16
    expected = F.log_softmax(T.float(), dim=-1).topk(4, dim=-1)
    assert torch.equal(ids, expected.indices)
    assert torch.equal(logprobs, expected.values.half())
    everything = top_k_logprobs(T.float(), 11)
    sparse = sparse_forward_kl(S.float(), *everything)
    # fp16 log-probs: the KL within their rounding
    torch.testing.assert_close(sparse, distill_loss(S.float(), T.float()), atol=1e-2, rtol=0)
    with pytest.raises(ValueError, match="top-k"):
        top_k_logprobs(T, 12)


def test_hidden_cosine_loss() -> None:
    h = torch.randn(2, 3, 8, generator=G)
    torch.testing.assert_close(hidden_cosine_loss(h, 2 * h), torch.zeros(2, 3), atol=1e-6, rtol=0)
    torch.testing.assert_close(
        hidden_cosine_loss(h, -h), torch.full((2, 3), 2.0), atol=1e-6, rtol=0
    )
    with pytest.raises(ValueError, match="widths"):
        hidden_cosine_loss(h, torch.randn(2, 3, 4))


def test_sparse_entries_at_minus_infinity_are_no_entries():
    """Padding to k (and an API's null) changes nothing: its id's student mass stays in the rest."""
    g = torch.Generator().manual_seed(0)
    student = torch.randn(5, 11, generator=g)
    ids = torch.stack([torch.randperm(11, generator=g)[:3] for _ in range(5)])  # (5, 3)
    logprobs = torch.log_softmax(torch.randn(5, 11, generator=g), -1).gather(-1, ids)
    padded_ids = torch.cat([ids, torch.zeros(5, 2, dtype=torch.long)], dim=-1)  # id 0 twice
    padded = torch.cat([logprobs, torch.full((5, 2), float("-inf"))], dim=-1)
    student = student.requires_grad_()
    plain = sparse_forward_kl(student, ids, logprobs, temperature=2.0)
    with_padding = sparse_forward_kl(student, padded_ids, padded, temperature=2.0)
    torch.testing.assert_close(with_padding, plain)
    (grad,) = torch.autograd.grad(with_padding.sum(), student)
    assert torch.isfinite(grad).all()
