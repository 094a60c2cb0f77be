"""The LM head fused with cross-entropy: loss over targets without materialising all logits.

A plain loss computes logits (N, vocab) for every position, keeps them for backward, then runs
log-softmax forward and backward over them: two full (N, vocab) tensors in memory and several
passes over them. Here the rows go through in chunks small enough to stay in cache: each chunk's
logits are computed, turned into the loss and, right away, into the gradient (softmax minus the
one-hot target), which is multiplied into the gradients of the hidden states and of the head
weight; the logits are then dropped. Backward only scales the stored gradients. Same numbers as
`F.cross_entropy(hidden @ weight.T, targets)` to float rounding; memory O(chunk x vocab).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

IGNORE_INDEX = -100  # as in F.cross_entropy: targets equal to it add no loss and no gradient
# Logits per chunk and the row range, by device: on a CPU a chunk (2 MiB in fp32) stays in a
# core's L2; on a GPU bigger chunks (32 MiB) keep the kernels large and launches few.
_CHUNKING = {"cpu": (1 << 19, 64, 1024), "gpu": (1 << 23, 256, 8192)}


def chunk_rows(vocab_size: int, device_type: str = "cpu") -> int:
    """Rows per chunk: ~512k logits on CPU (64..1024 rows), ~8M on GPUs (256..8192), a power of 2."""
    elements, least, most = _CHUNKING["cpu" if device_type == "cpu" else "gpu"]
    rows = max(least, min(most, elements // max(1, vocab_size)))
    return 1 << (rows.bit_length() - 1)


ChunkLoss = Callable[[int, int, torch.Tensor, bool], tuple[torch.Tensor, torch.Tensor | None]]


def chunked_head(
    hidden: torch.Tensor,  # (N, dim)
    weight: torch.Tensor,  # (vocab, dim)
    compute_dtype: torch.dtype,
    rows: int,
    needs: tuple[bool, bool],  # (gradient for hidden, gradient for weight)
    chunk_loss: ChunkLoss,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(summed loss, d/d hidden, d/d weight in weight's dtype; empty where not needed) of a loss
    over hidden @ weight.T, rows in chunks: chunk_loss(start, stop, logits (c, vocab) float32 it
    may consume, want_grad) gives the chunk's summed loss and d loss / d logits (or None)."""
    w_c = weight.to(compute_dtype)  # (vocab, dim)
    grad_h = torch.empty_like(hidden) if needs[0] else None  # every row is written below
    grad_w = (
        torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if needs[1] else None
    )
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    for start in range(0, hidden.shape[0], rows):
        stop = min(start + rows, hidden.shape[0])
        h_c = hidden[start:stop].to(compute_dtype)  # (c, dim)
        loss, g_logits = chunk_loss(start, stop, (h_c @ w_c.t()).float(), any(needs))
        total += loss
        if g_logits is None:
            continue
        g_c = g_logits.to(compute_dtype)  # (c, vocab)
        if grad_h is not None:
            grad_h[start:stop] = g_c @ w_c  # (c, dim); assignment casts the dtype
        if grad_w is not None and compute_dtype == torch.float32:
            grad_w.addmm_(g_c.t(), h_c)  # (vocab, dim), accumulated in place
        elif grad_w is not None:  # addmm_ cannot mix a bf16 product into fp32
            grad_w.add_((g_c.t() @ h_c).float())
    empty = torch.empty(0)
    return (
        total,
        grad_h if grad_h is not None else empty,
        grad_w.to(weight.dtype) if grad_w is not None else empty,
    )


def stored_grads(
    ctx: torch.autograd.function.FunctionCtx, grad_loss: torch.Tensor, n_inputs: int
) -> tuple[torch.Tensor | None, ...]:
    """Backward of a fused head whose forward saved (d/d hidden, d/d weight): both scaled by the
    incoming gradient, None for the other n_inputs - 2 inputs."""
    grad_h, grad_w = ctx.saved_tensors  # type: ignore[attr-defined]
    need = ctx.needs_input_grad  # type: ignore[attr-defined]
    return (
        grad_h * grad_loss if need[0] else None,
        grad_w * grad_loss if need[1] else None,
        *([None] * (n_inputs - 2)),
    )


class _LinearCrossEntropy(torch.autograd.Function):
    """Forward computes the loss and both gradients chunk by chunk; backward scales them."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        hidden: torch.Tensor,  # (N, dim)
        weight: torch.Tensor,  # (vocab, dim)
        targets: torch.Tensor,  # (N,) int64
        compute_dtype: torch.dtype,
        rows: int,
        grad_enabled: bool,
        mean: bool,
    ) -> torch.Tensor:
        valid = targets != IGNORE_INDEX  # (N,)
        # 1 / targets as a tensor: no host sync on a GPU; 0 targets -> loss 0, not NaN.
        # A summed loss (the training loop normalises by its own count) scales by 1.
        inv_n = (
            1.0 / valid.sum().clamp(min=1).to(torch.float32)
            if mean
            else torch.ones((), dtype=torch.float32, device=hidden.device)
        )  # ()

        def chunk(start: int, stop: int, logits: torch.Tensor, want_grad: bool):
            ok = valid[start:stop]  # (c,)
            y_c = torch.where(ok, targets[start:stop], 0)[:, None]  # (c, 1); ignored rows -> 0
            target_logit = logits.gather(1, y_c)  # (c, 1)
            # Softmax in place, a few passes over a cache-resident chunk (logsumexp would
            # allocate and pass over the chunk twice more).
            row_max = logits.amax(dim=-1, keepdim=True)  # (c, 1)
            probs = logits.sub_(row_max).exp_()  # (c, vocab), unnormalised
            row_sum = probs.sum(dim=-1, keepdim=True)  # (c, 1)
            row_loss = (row_max + row_sum.log() - target_logit).squeeze(1)  # (c,)
            loss = torch.where(ok, row_loss, 0.0).sum()
            if not want_grad:
                return loss, None
            # d(loss)/d(logits) = (softmax - onehot) * inv_n, zero on ignored rows.
            scale = ok.to(probs.dtype)[:, None] * inv_n  # (c, 1)
            probs.mul_(scale / row_sum)
            probs.scatter_add_(1, y_c, -scale)
            return loss, probs

        # needs_input_grad says True under no_grad too; grad_enabled is the caller's grad mode.
        needs = (grad_enabled and ctx.needs_input_grad[0], grad_enabled and ctx.needs_input_grad[1])
        total, grad_h, grad_w = chunked_head(hidden, weight, compute_dtype, rows, needs, chunk)
        ctx.save_for_backward(grad_h, grad_w)
        return total * inv_n

    @staticmethod
    @torch.autograd.function.once_differentiable  # the stored gradients are constants
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad_loss: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        return stored_grads(ctx, grad_loss, 7)


@torch.compiler.disable  # a Python loop over chunks; eager is what makes it cheap
def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    rows: int | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Cross-entropy of `hidden @ weight.T` against targets, -100 ignored, "mean" over the
    targets or "sum"; (..., dim) -> ()."""
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    device_type = hidden.device.type
    compute_dtype = _autocast_dtype(device_type) or hidden.dtype
    h = hidden.reshape(-1, hidden.shape[-1])  # (N, dim)
    y = targets.reshape(-1)  # (N,)
    if h.shape[0] != y.shape[0]:
        raise ValueError(f"{h.shape[0]} hidden rows but {y.shape[0]} targets")
    with torch.autocast(device_type, enabled=False):
        return _LinearCrossEntropy.apply(
            h,
            weight,
            y,
            compute_dtype,
            rows or chunk_rows(weight.shape[0], device_type),
            torch.is_grad_enabled(),
            reduction == "mean",
        )


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    """The autocast dtype in force for the device type, or None when autocast is off."""
    try:  # torch >= 2.4
        on = torch.is_autocast_enabled(device_type)
    except TypeError:  # torch 2.3 has per-device functions only
        if device_type == "cpu":
            return torch.get_autocast_cpu_dtype() if torch.is_autocast_cpu_enabled() else None
        return torch.get_autocast_gpu_dtype() if torch.is_autocast_enabled() else None
    return torch.get_autocast_dtype(device_type) if on else None
