"""Causal self-attention on the CPU through PocketLM's own AVX-512 kernels (model/native/attention.c).

At the head sizes of small models (32-64) PyTorch's CPU flash-attention kernel runs at a third
of the machine's matmul speed; these kernels run the same maths (exact softmax, log-sum-exp
saved for the backward pass, no T x T tensor kept) 1.45-1.7x faster for the forward and backward
together. They are registered as a torch custom op with its own backward, so `torch.compile`
keeps them in its graph. Where they do not apply (no AVX-512, GPU, KV cache,
dropout, head size not a multiple of 16, POCKETLM_ISA below avx512) the model uses
scaled_dot_product_attention.

Packed training rows pass each query's document start (`doc_starts`): attention stays inside
each document and the kernels skip the scores left of it, so a row of short documents costs
about the sum of their squared lengths. bf16 inputs (autocast, bf16 weights) take these kernels
too, in fp32 (the op casts; it keeps its inputs and output for backward in bf16): SDPA's bf16 CPU kernels run 1.3-3.4x slower on plain
causal rows (fp32 kernels with the casts, forward + backward: 24 vs 41 ms at 1 x 1024 tokens,
9 x 64 heads; 2.5 vs 8.6 ms at 8 x 128, 4 x 32) and 5-9x slower with the block-diagonal mask a
packed row needs (benchmarks/packed_attention.py).
"""

from __future__ import annotations

import functools
from types import ModuleType

import torch

KERNELS = ("auto", "sdpa")  # per Attention module: "auto" = native where it applies


@functools.cache
def _extension() -> ModuleType | None:
    """The compiled kernels, or None where the build skipped them or the CPU lacks AVX-512."""
    try:
        from pocketlm.model import _attention
    except ImportError:
        return None
    if not _attention.supported() or not hasattr(torch.library, "custom_op"):
        return None
    _register_ops()
    return _attention


@torch.compiler.assume_constant_result  # a fact of the machine: torch.compile need not trace it
def available() -> bool:
    """Whether this machine and build run the native attention kernels, under the ISA cap
    (POCKETLM_ISA below avx512 sends attention to SDPA)."""
    from pocketlm.common.isa import isa_allows, isa_cap

    return isa_allows("avx512", isa_cap()) and _extension() is not None


def applies(q: torch.Tensor, dropout: float) -> bool:
    """Whether causal attention over q (B, T, H, hd) can run natively (else SDPA); half-precision
    inputs too (the caller computes in fp32 and casts back)."""
    half = q.dtype in (torch.bfloat16, torch.float16)
    return (
        q.device.type == "cpu"
        and (q.dtype == torch.float32 or half)
        and q.shape[-1] % 16 == 0
        and q.shape[1] > 1
        and dropout == 0.0
        and available()
    )


def causal_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, doc_starts: torch.Tensor | None = None
) -> torch.Tensor:
    """softmax(q kᵀ / √hd, causal) v for q (B, T, H, hd), k and v (B, T, KV, hd) -> (B, T, H, hd).

    Computed in fp32 whatever the input dtype; bf16/fp16 inputs give an output in their dtype and
    are kept for backward in it (half the bytes; the backward reads the rounded output).

    Grouped-query: query head h reads kv head h // (H / KV). Differentiable in q, k and v.
    With doc_starts (B, T) (the first position of each query's document, nondecreasing along a
    row: model/attention.py document_starts) query t sees keys doc_starts[t] .. t only.
    """
    if not available():
        raise RuntimeError("native attention is not available on this machine (needs AVX-512)")
    if doc_starts is not None:
        doc_starts = doc_starts.to(torch.int32).contiguous()
    out, _lse = torch.ops.pocketlm.causal_attention(q, k, v, doc_starts)
    return out


def _view(t: torch.Tensor) -> tuple[int, int, int, int]:
    """(data pointer, batch, head, position strides) of a (B, T, heads, hd) float tensor."""
    return (t.data_ptr(), t.stride(0), t.stride(2), t.stride(1))


def _dense_rows(t: torch.Tensor) -> torch.Tensor:
    """t with unit stride along head_dim, as the kernels read whole rows."""
    return t if t.stride(-1) == 1 else t.contiguous()


def _starts_ptr(starts: torch.Tensor | None) -> int:
    """The kernels' pointer to int32 document starts (B, T), 0 for none."""
    return 0 if starts is None else starts.data_ptr()


def _dims(q: torch.Tensor, k: torch.Tensor) -> tuple[int, int, int, int, int]:
    batch, seq, heads, head_dim = q.shape
    return (batch, heads, k.shape[2], seq, head_dim)


def _register_ops() -> None:
    """Define pocketlm::causal_attention (+ backward) once, with fake kernels for torch.compile."""
    from pocketlm.model import _attention

    @torch.library.custom_op("pocketlm::causal_attention", mutates_args=())
    def forward(
        q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, starts: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = q.dtype  # bf16/fp16 in: computed in fp32, returned (and saved) in the input dtype
        q, k, v = _dense_rows(q.float()), _dense_rows(k.float()), _dense_rows(v.float())
        batch, seq, heads, head_dim = q.shape
        out = torch.empty_like(q, memory_format=torch.contiguous_format)  # (B, T, H, hd)
        lse = torch.empty(batch, heads, seq, dtype=torch.float32)  # (B, H, T)
        _attention.forward(
            _view(q), _view(k), _view(v), _view(out), lse.data_ptr(), _starts_ptr(starts),
            _dims(q, k), head_dim**-0.5, torch.get_num_threads(),
        )  # fmt: skip
        return out.to(dtype), lse

    @forward.register_fake
    def _(
        q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, starts: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        batch, seq, heads, _ = q.shape
        return torch.empty_like(q, memory_format=torch.contiguous_format), q.new_empty(
            batch, heads, seq
        )

    @torch.library.custom_op("pocketlm::causal_attention_backward", mutates_args=())
    def backward(
        grad: torch.Tensor,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        out: torch.Tensor,
        lse: torch.Tensor,
        starts: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        dtypes = (q.dtype, k.dtype, v.dtype)
        grad, q, k, v = (_dense_rows(t.float()) for t in (grad, q, k, v))
        out = _dense_rows(out.float())
        dq = torch.empty_like(q, memory_format=torch.contiguous_format)
        dk = torch.empty_like(k, memory_format=torch.contiguous_format)
        dv = torch.empty_like(v, memory_format=torch.contiguous_format)
        _attention.backward(
            _view(q), _view(k), _view(v), _view(out), _view(grad), _view(dq), _view(dk),
            _view(dv), lse.contiguous().data_ptr(), _starts_ptr(starts), _dims(q, k),
            q.shape[-1] ** -0.5, torch.get_num_threads(),
        )  # fmt: skip
        return dq.to(dtypes[0]), dk.to(dtypes[1]), dv.to(dtypes[2])

    @backward.register_fake
    def _(grad, q, k, v, out, lse, starts):
        return (
            torch.empty_like(q, memory_format=torch.contiguous_format),
            torch.empty_like(k, memory_format=torch.contiguous_format),
            torch.empty_like(v, memory_format=torch.contiguous_format),
        )

    def setup_context(ctx, inputs, output) -> None:
        q, k, v, starts = inputs
        ctx.save_for_backward(q, k, v, *output)
        ctx.starts = starts  # integer positions: nothing flows back to them

    def grads(ctx, grad_out: torch.Tensor, _grad_lse: torch.Tensor | None):
        q, k, v, out, lse = ctx.saved_tensors
        grads = torch.ops.pocketlm.causal_attention_backward(
            grad_out, q, k, v, out, lse, ctx.starts
        )
        return (*grads, None)

    forward.register_autograd(grads, setup_context=setup_context)
