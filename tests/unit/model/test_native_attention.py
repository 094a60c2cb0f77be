"""PocketLM's CPU attention kernels against PyTorch's SDPA: outputs, gradients, GQA, odd lengths,
strided inputs, thread counts, torch.compile, and the model's choice between the two."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pocketlm.model import native_attention
from pocketlm.model.config import ModelConfig
from pocketlm.model.transformer import build_model, set_attention_kernel

needs_kernels = pytest.mark.skipif(
    not native_attention.available(),
    reason="native attention needs AVX-512 (avx512f, avx512dq) in the CPU, the compiled "
    "extension, and POCKETLM_ISA at avx512 or auto",
)


def _reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """SDPA on (B, T, heads, hd) inputs, kv heads repeated for grouped queries -> (B, T, H, hd)."""
    rep = q.shape[2] // k.shape[2]
    k = k.repeat_interleave(rep, dim=2)
    v = v.repeat_interleave(rep, dim=2)
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True
    )  # (B, H, T, hd)
    return out.transpose(1, 2)


def _inputs(batch: int, seq: int, heads: int, kv: int, hd: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, seq, heads, hd, generator=gen)
    k = torch.randn(batch, seq, kv, hd, generator=gen)
    v = torch.randn(batch, seq, kv, hd, generator=gen)
    grad = torch.randn(batch, seq, heads, hd, generator=gen)
    return q, k, v, grad


def _grads(fn, q, k, v, grad):
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out = fn(*leaves)
    out.backward(grad)
    return out.detach(), [t.grad for t in leaves]


@needs_kernels
@pytest.mark.parametrize(
    "batch,seq,heads,kv,hd",
    [
        (2, 37, 4, 2, 32),  # grouped queries, length not a multiple of the 8-row block
        (1, 70, 2, 1, 48),  # a head size with a 16-wide column tail
        (2, 64, 2, 2, 64),
        (3, 9, 4, 4, 16),  # fewer keys than one 16-lane vector
        (1, 300, 2, 2, 32),  # more than one 256 tile of keys, odd length
    ],
)
def test_matches_sdpa_forward_and_backward(batch, seq, heads, kv, hd) -> None:
    q, k, v, grad = _inputs(batch, seq, heads, kv, hd)
    out, (dq, dk, dv) = _grads(native_attention.causal_attention, q, k, v, grad)
    ref, (rq, rk, rv) = _grads(_reference, q, k, v, grad)
    assert out.shape == (batch, seq, heads, hd)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)
    for got, want in ((dq, rq), (dk, rk), (dv, rv)):
        torch.testing.assert_close(got, want, atol=5e-5, rtol=1e-4)


@needs_kernels
def test_strided_inputs_and_thread_counts_give_the_same_bits() -> None:
    q, k, v, grad = _inputs(2, 40, 4, 2, 32, seed=1)
    # (B, H, T, hd) storage seen as (B, T, H, hd): rows 1 position apart are hd floats apart
    q_strided = q.transpose(1, 2).contiguous().transpose(1, 2)
    assert not q_strided.is_contiguous()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one, grads_one = _grads(native_attention.causal_attention, q, k, v, grad)
        torch.set_num_threads(2)
        two, grads_two = _grads(native_attention.causal_attention, q_strided, k, v, grad)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)  # each (batch, kv head) is one thread's work, in one order
    for a, b in zip(grads_one, grads_two, strict=True):
        assert torch.equal(a, b)


@needs_kernels
def test_the_causal_mask_holds() -> None:
    q, k, v, _ = _inputs(1, 24, 2, 2, 32, seed=2)
    out = native_attention.causal_attention(q, k, v)
    k2, v2 = k.clone(), v.clone()
    k2[:, 12:] += 5.0  # changing later keys and values must not move earlier outputs
    v2[:, 12:] -= 3.0
    out2 = native_attention.causal_attention(q, k2, v2)
    assert torch.equal(out[:, :12], out2[:, :12])
    assert not torch.allclose(out[:, 12:], out2[:, 12:])


@needs_kernels
@pytest.mark.parametrize(
    "backend",
    [
        # dynamo + AOT autograd without code generation: the op traces with its own backward
        "aot_eager",
        # inductor's C++ code generation (~25 s on 2 cores): the slow tier
        pytest.param("inductor", marks=pytest.mark.slow),
    ],
)
def test_compiles_with_its_own_backward(backend: str) -> None:
    q, k, v, grad = _inputs(2, 33, 4, 2, 32, seed=3)
    compiled = torch.compile(
        lambda a, b, c: native_attention.causal_attention(a, b, c) * 2.0, backend=backend
    )
    out, grads = _grads(compiled, q, k, v, grad)
    ref, ref_grads = _grads(lambda a, b, c: _reference(a, b, c) * 2.0, q, k, v, grad)
    torch.testing.assert_close(out, ref, atol=5e-5, rtol=1e-4)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def _model(kv: int = 2) -> torch.nn.Module:
    config = ModelConfig(
        vocab_size=128, max_seq_len=64, dim=64, n_layers=2, n_heads=4, n_kv_heads=kv
    )
    return build_model(config)


@needs_kernels
def test_model_trains_the_same_on_both_kernels() -> None:
    model = _model()
    ids = torch.randint(0, 128, (2, 50), generator=torch.Generator().manual_seed(4))
    results = {}
    for kind in ("sdpa", "auto"):
        set_attention_kernel(model, kind)
        model.zero_grad()
        loss = model(ids[:, :-1], targets=ids[:, 1:])
        loss.backward()
        results[kind] = (loss.detach(), [p.grad.clone() for p in model.parameters()])
    torch.testing.assert_close(results["auto"][0], results["sdpa"][0], atol=1e-6, rtol=1e-6)
    for got, want in zip(results["auto"][1], results["sdpa"][1], strict=True):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


def test_model_uses_the_kernels_only_where_they_apply(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = native_attention.causal_attention
    monkeypatch.setattr(native_attention, "available", lambda: True)
    monkeypatch.setattr(
        native_attention,
        "causal_attention",
        lambda q, k, v, doc_starts=None: calls.append(q.shape) or real_or_ref(q, k, v),
    )

    def real_or_ref(q, k, v):
        return real(q, k, v) if native_attention._extension() is not None else _reference(q, k, v)

    model = _model().eval()
    ids = torch.randint(0, 128, (1, 10))
    with torch.no_grad():
        model(ids)  # fp32 on the CPU, no cache: the native path
        assert calls == [(1, 10, 4, 16)] * 2
        set_attention_kernel(model, "sdpa")
        model(ids)
        assert len(calls) == 2
        set_attention_kernel(model, "auto")
        model.to(torch.bfloat16)(ids)  # half precision too (computed in fp32 by the op)
        assert calls == [(1, 10, 4, 16)] * 4


def test_applies_and_kernel_choice_are_checked() -> None:
    q = torch.zeros(1, 8, 2, 32)
    if native_attention.available():
        assert native_attention.applies(q, 0.0)
    assert not native_attention.applies(q, 0.1)  # dropout: SDPA
    assert native_attention.applies(q.to(torch.bfloat16), 0.0) == native_attention.available()
    assert not native_attention.applies(torch.zeros(1, 8, 2, 8), 0.0)  # head size 8
    assert not native_attention.applies(torch.zeros(1, 1, 2, 32), 0.0)  # one position
    with pytest.raises(ValueError, match="auto, sdpa"):
        set_attention_kernel(_model(), "flash")


@pytest.mark.parametrize("cap", ["portable", "avx2", "avx512", "auto"])
def test_the_isa_cap_decides_whether_attention_runs_natively(monkeypatch, cap) -> None:
    """Below avx512 the kernels never run (SDPA does, with the same result); at avx512 or auto
    they run wherever the machine has them. Runs on every machine."""
    monkeypatch.setenv("POCKETLM_ISA", cap)
    built = native_attention._extension() is not None
    assert native_attention.available() == (built and cap in ("avx512", "auto"))
    calls = []
    real = native_attention.causal_attention
    monkeypatch.setattr(
        native_attention,
        "causal_attention",
        lambda q, k, v, doc_starts=None: calls.append(1) or real(q, k, v, doc_starts),
    )
    model = _model().eval()
    ids = torch.randint(0, 128, (1, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        auto = model(ids)
        set_attention_kernel(model, "sdpa")
        sdpa = model(ids)
    assert bool(calls) == native_attention.available()
    torch.testing.assert_close(auto, sdpa, atol=1e-5, rtol=1e-5)


def test_a_bad_isa_cap_names_the_variable(monkeypatch) -> None:
    from pocketlm.common.errors import ConfigError

    monkeypatch.setenv("POCKETLM_ISA", "avx1024")
    with pytest.raises(
        ConfigError, match="POCKETLM_ISA='avx1024': use auto, portable, avx2, avx512"
    ):
        native_attention.available()


@pytest.mark.skipif(not native_attention.available(), reason="needs AVX-512 and the built kernels")
def test_bf16_inputs_are_computed_in_fp32_and_returned_and_differentiated_in_bf16() -> None:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 12, 4, 16, generator=g) for _ in range(3))
    half = [t.to(torch.bfloat16).requires_grad_() for t in (q, k, v)]
    full = [t.detach().float().requires_grad_() for t in half]  # the same rounded inputs
    out_half = native_attention.causal_attention(*half)
    out_full = native_attention.causal_attention(*full)
    assert out_half.dtype == torch.bfloat16
    torch.testing.assert_close(out_half, out_full.to(torch.bfloat16), rtol=0, atol=0)
    grad = torch.randn(out_full.shape, generator=g)
    out_half.backward(grad.to(torch.bfloat16))
    out_full.backward(grad.to(torch.bfloat16).float())
    for h, f in zip(half, full, strict=True):
        assert h.grad.dtype == torch.bfloat16
        # the backward reads the output rounded to bf16: gradients agree to bf16 precision
        torch.testing.assert_close(h.grad.float(), f.grad, rtol=2e-2, atol=2e-2)
