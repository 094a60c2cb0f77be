"""The LM head fused with cross-entropy gives F.cross_entropy's loss and gradients, chunk by chunk."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pocketlm.model.config import ModelConfig
from pocketlm.model.linear_cross_entropy import chunk_rows, linear_cross_entropy
from pocketlm.model.transformer import build_model


def _inputs(n: int = 37, dim: int = 12, vocab: int = 50, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, dim, generator=g, requires_grad=True)
    weight = (torch.randn(vocab, dim, generator=g) * 0.5).requires_grad_()
    targets = torch.randint(0, vocab, (n,), generator=g)
    return hidden, weight, targets


def _reference(hidden, weight, targets):
    h, w = hidden.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()
    loss = F.cross_entropy(h @ w.t(), targets, ignore_index=-100)
    loss.backward()
    return loss.detach(), h.grad, w.grad


@pytest.mark.parametrize("rows", [1, 16, 64, 1024])  # chunks that do and do not divide 37 rows
def test_loss_and_gradients_match_cross_entropy(rows: int) -> None:
    hidden, weight, targets = _inputs()
    ref_loss, ref_gh, ref_gw = _reference(hidden, weight, targets)
    loss = linear_cross_entropy(hidden, weight, targets, rows=rows)
    loss.backward()
    torch.testing.assert_close(loss.detach(), ref_loss, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(hidden.grad, ref_gh, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(weight.grad, ref_gw, rtol=1e-5, atol=1e-7)


def test_ignored_targets_add_no_loss_and_no_gradient() -> None:
    hidden, weight, targets = _inputs()
    targets[::3] = -100
    ref_loss, ref_gh, ref_gw = _reference(hidden, weight, targets)
    loss = linear_cross_entropy(hidden, weight, targets, rows=8)
    loss.backward()
    torch.testing.assert_close(loss.detach(), ref_loss, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(hidden.grad, ref_gh, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(weight.grad, ref_gw, rtol=1e-5, atol=1e-7)
    assert hidden.grad[::3].abs().max() == 0


def test_sum_reduction_is_the_summed_cross_entropy_and_its_gradient() -> None:
    hidden, weight, targets = _inputs()
    targets[::4] = -100
    h, w = hidden.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()
    ref = F.cross_entropy(h @ w.t(), targets, ignore_index=-100, reduction="sum")
    ref.backward()
    loss = linear_cross_entropy(hidden, weight, targets, rows=8, reduction="sum")
    loss.backward()
    torch.testing.assert_close(loss.detach(), ref.detach(), rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(hidden.grad, h.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(weight.grad, w.grad, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="reduction"):
        linear_cross_entropy(hidden, weight, targets, reduction="none")


def test_all_targets_ignored_gives_zero_loss_not_nan() -> None:
    hidden, weight, targets = _inputs()
    loss = linear_cross_entropy(hidden, weight, torch.full_like(targets, -100))
    loss.backward()
    assert loss.item() == 0.0
    assert hidden.grad.abs().max() == 0 and weight.grad.abs().max() == 0


def test_upstream_gradient_scales_and_no_grad_gives_the_same_loss() -> None:
    hidden, weight, targets = _inputs()
    (3.0 * linear_cross_entropy(hidden, weight, targets, rows=8)).backward()
    _, ref_gh, ref_gw = _reference(hidden, weight, targets)
    torch.testing.assert_close(hidden.grad, 3.0 * ref_gh, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(weight.grad, 3.0 * ref_gw, rtol=1e-5, atol=1e-7)
    with torch.no_grad():
        plain = linear_cross_entropy(hidden, weight, targets)
    torch.testing.assert_close(plain, _reference(hidden, weight, targets)[0])
    assert not plain.requires_grad


def test_no_grad_skips_the_gradient_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under no_grad (evaluation) only the logits products run, not the two gradient ones."""
    hidden, weight, targets = _inputs(n=64)
    calls: list[str] = []
    for owner, name in ((torch.Tensor, "__matmul__"), (torch, "mm"), (torch.Tensor, "addmm_")):
        real = getattr(owner, name)
        monkeypatch.setattr(
            owner, name, lambda *a, _r=real, _n=name, **k: calls.append(_n) or _r(*a, **k)
        )
    linear_cross_entropy(hidden, weight, targets, rows=16)
    assert len(calls) == 12  # 4 chunks x (logits, grad of hidden, grad of weight)
    calls.clear()
    with torch.no_grad():
        linear_cross_entropy(hidden, weight, targets, rows=16)
    assert calls == ["__matmul__"] * 4  # the logits of each chunk, nothing else


def test_mismatched_rows_and_targets_is_a_clear_error() -> None:
    hidden, weight, targets = _inputs()
    with pytest.raises(ValueError, match="37 hidden rows but 36 targets"):
        linear_cross_entropy(hidden, weight, targets[:36])


def test_model_forward_with_targets_equals_loss_over_its_logits() -> None:
    """Tied embeddings: the head's gradient and the embedding's land on the same tensor."""
    config = ModelConfig(vocab_size=97, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=16)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randint(0, 97, (3, 16), generator=g), torch.randint(0, 97, (3, 16), generator=g)
    y[0, :5] = -100  # e.g. a prompt that is not trained on
    fused, plain = build_model(config, seed=3), build_model(config, seed=3)
    fused(x, targets=y).backward()
    ref = F.cross_entropy(plain(x).reshape(-1, 97), y.reshape(-1), ignore_index=-100)
    ref.backward()
    torch.testing.assert_close(fused(x, targets=y), ref.detach(), rtol=1e-6, atol=1e-6)
    for (name, p), q in zip(fused.named_parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_bf16_autocast_computes_in_bf16_and_stays_close_to_fp32() -> None:
    hidden, weight, targets = _inputs(n=64, dim=32, vocab=300)
    ref_loss, ref_gh, ref_gw = _reference(hidden, weight, targets)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = linear_cross_entropy(hidden, weight, targets)
        # the same products as autocast's own bf16 linear: the head did run in bf16
        logits_bf16 = F.linear(hidden.detach(), weight.detach())
    loss.backward()
    assert loss.dtype == torch.float32 and hidden.grad.dtype == weight.grad.dtype == torch.float32
    torch.testing.assert_close(loss.detach(), F.cross_entropy(logits_bf16.float(), targets))
    assert loss.item() != ref_loss.item()  # not silently fp32
    torch.testing.assert_close(loss.detach(), ref_loss, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(hidden.grad, ref_gh, rtol=0.1, atol=2e-3)
    torch.testing.assert_close(weight.grad, ref_gw, rtol=0.1, atol=2e-3)


def test_chunk_rows_keeps_about_half_a_million_logits() -> None:
    assert chunk_rows(4096) == 128
    assert chunk_rows(151_936) == 64  # never fewer rows than 64
    assert chunk_rows(100) == 1024  # never more than 1024
    assert chunk_rows(5000) == 64  # 104 rounded down to a power of two
    assert chunk_rows(4096, "cuda") == 2048  # GPUs take bigger chunks: fewer, larger kernels
    assert chunk_rows(151_936, "cuda") == 256
