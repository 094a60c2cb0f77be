"""The head fused with the sparse forward KL gives position_losses' sum on full logits and its
gradients (hidden states and head weight), at any temperature and hard-label weight, with
padded (-inf) teacher entries, a teacher whose top-k holds all its mass, and chunk sizes that
do not divide the rows."""

from __future__ import annotations

import pytest
import torch

from pocketlm.train.distill_loss import position_losses, top_k_logprobs
from pocketlm.train.linear_sparse_kl import linear_sparse_kl
from pocketlm.train.tasks.distill_lm import DistillConfig

N, DIM, VOCAB, K = 37, 16, 50, 6


def _case(seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, DIM, generator=g, dtype=torch.float64)
    weight = torch.randn(VOCAB, DIM, generator=g, dtype=torch.float64) * 0.5
    teacher = torch.randn(N, VOCAB, generator=g, dtype=torch.float64) * 2
    ids, logprobs = top_k_logprobs(teacher, K)
    logprobs = logprobs.double()
    logprobs[3, -2:] = float("-inf")  # fewer than k entries (an API's nulls, padding)
    logprobs[5] = torch.log_softmax(torch.tensor([9.0, 1, 0, -1, -2, -3]), 0).double()
    peaked = torch.full((K,), float("-inf"), dtype=torch.float64)
    peaked[0] = 0.0  # the whole mass listed: no rest term
    logprobs[7] = peaked
    labels = torch.randint(0, VOCAB, (N,), generator=g)
    return hidden, weight, ids, logprobs, labels


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("hard_weight", [0.0, 0.3])
@pytest.mark.parametrize("rows", [8, 64])
def test_fused_equals_position_losses_on_full_logits(temperature, hard_weight, rows):
    hidden, weight, ids, logprobs, labels = _case(0)
    settings = DistillConfig(temperature=temperature, hard_weight=hard_weight)
    h_ref, w_ref = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    reference = position_losses(h_ref @ w_ref.t(), (ids, logprobs), labels, settings).sum()
    reference.backward()
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    fused = linear_sparse_kl(
        h, w, ids, logprobs, labels, temperature=temperature, hard_weight=hard_weight, rows=rows
    )
    fused.backward()
    # both compute in float32 (the student's logits are upcast so): equal to its rounding
    torch.testing.assert_close(fused, reference, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(h.grad, h_ref.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(w.grad, w_ref.grad, rtol=1e-4, atol=1e-6)


def test_a_frozen_head_gets_no_gradient_and_no_grad_mode_computes_the_loss_alone():
    hidden, weight, ids, logprobs, labels = _case(1)
    h = hidden.clone().requires_grad_()
    linear_sparse_kl(h, weight, ids, logprobs, labels).backward()
    assert h.grad is not None and weight.grad is None
    with torch.no_grad():
        quiet = linear_sparse_kl(hidden, weight, ids, logprobs, labels)
    settings = DistillConfig()
    reference = position_losses(hidden @ weight.t(), (ids, logprobs), labels, settings).sum()
    torch.testing.assert_close(quiet, reference, rtol=1e-6, atol=1e-6)
