"""The student's LM head fused with the sparse forward KL against a teacher's top-k (a cache, the
live top-k teacher): the distillation loss without materialising the student's logits.

distill_loss.sparse_forward_kl on full logits costs a (N, vocab) tensor for the logits, their
tempered log-softmax and the gradients of both: several passes over N x vocab floats a step,
where the cached teacher itself costs nothing. Here, as model/linear_cross_entropy does for the
plain loss, the rows go through in cache-sized chunks: each chunk's logits become the loss and,
at once, the gradient, which is multiplied into the gradients of the hidden states and of the
head weight; backward only scales them. With u = logits / T, s = softmax(u), the teacher's
listed probabilities p_k (P = Σ p_k, rest t = 1 - P) and the student's S = Σ s_k, rest r = 1 - S:

    loss = T² [Σ_k p_k (log p_k - log s_k) + t (log t - log r)]     (the rest term where t > 0)
    d loss / d u_j = T² [s_j (P - a S) + Σ_{k: id_k = j} (a s_k - p_k)],   a = t / r

plus, with a hard-label weight h, (1 - h) times that and h times the cross-entropy of the
untempered logits. Same numbers as distill_loss.position_losses on full logits to float
rounding.
"""

from __future__ import annotations

import torch

from pocketlm.model.linear_cross_entropy import (
    _autocast_dtype,
    chunk_rows,
    chunked_head,
    stored_grads,
)

_REST_FLOOR = 1e-12  # the student's rest is clamped here, as sparse_forward_kl clamps it


class _LinearSparseKL(torch.autograd.Function):
    """Forward computes the summed loss and both gradients chunk by chunk; backward scales them."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        hidden: torch.Tensor,  # (N, dim)
        weight: torch.Tensor,  # (vocab, dim)
        teacher_ids: torch.Tensor,  # (N, k)
        teacher_logprobs: torch.Tensor,  # (N, k), -inf: no entry
        labels: torch.Tensor,  # (N,)
        settings: tuple[float, float, torch.dtype, int, bool],
    ) -> torch.Tensor:
        temperature, hard_weight, compute_dtype, rows, grad_enabled = settings

        def chunk(start: int, stop: int, logits: torch.Tensor, want_grad: bool):
            return _chunk(
                logits, teacher_ids[start:stop].long(), teacher_logprobs[start:stop].float(),
                labels[start:stop], temperature, hard_weight, want_grad,
            )  # fmt: skip

        needs = (grad_enabled and ctx.needs_input_grad[0], grad_enabled and ctx.needs_input_grad[1])
        total, grad_h, grad_w = chunked_head(hidden, weight, compute_dtype, rows, needs, chunk)
        ctx.save_for_backward(grad_h, grad_w)
        return total

    @staticmethod
    @torch.autograd.function.once_differentiable  # the stored gradients are constants
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad_loss: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        return stored_grads(ctx, grad_loss, 6)


def _chunk(
    logits: torch.Tensor,  # (c, vocab) float32, consumed
    ids: torch.Tensor,  # (c, k) int64
    log_t: torch.Tensor,  # (c, k) float32
    labels: torch.Tensor,  # (c,)
    temperature: float,
    hard_weight: float,
    want_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(summed loss, d loss / d logits (c, vocab) or None) of one chunk."""
    ce_loss, ce_grad = None, None
    if hard_weight > 0.0 and temperature != 1.0:  # the hard labels' softmax is untempered
        ce_loss, ce_grad = _cross_entropy(logits.clone(), labels, want_grad)
    u = logits.div_(temperature) if temperature != 1.0 else logits  # (c, vocab)
    label_u = u.gather(1, labels[:, None]) if hard_weight > 0.0 and ce_loss is None else None
    row_max = u.amax(dim=-1, keepdim=True)  # (c, 1)
    u_k = u.gather(1, ids)  # (c, k)
    probs = u.sub_(row_max).exp_()  # (c, vocab), unnormalised
    row_sum = probs.sum(dim=-1, keepdim=True)  # (c, 1)
    lse = row_max + row_sum.log()  # (c, 1)
    log_s_k = u_k - lse  # (c, k)
    listed = log_t > float("-inf")  # (c, k)
    p_k = torch.where(listed, log_t.exp(), 0.0)  # (c, k)
    s_k = torch.where(listed, log_s_k.exp(), 0.0)  # (c, k)
    t_rest = (1.0 - p_k.sum(-1)).clamp(min=0.0)  # (c,)
    s_rest_raw = 1.0 - s_k.sum(-1)  # (c,)
    s_rest = s_rest_raw.clamp(min=_REST_FLOOR)  # (c,)
    listed_kl = torch.where(p_k > 0, p_k * (log_t - log_s_k), 0.0).sum(-1)  # (c,)
    rest_log = t_rest.clamp(min=_REST_FLOOR).log() - s_rest.log()  # (c,)
    rest_kl = torch.where(t_rest > 0, t_rest * rest_log, 0.0)  # (c,)
    scale = (1.0 - hard_weight) * temperature**2
    loss = scale * (listed_kl + rest_kl).sum()
    if label_u is not None:  # T = 1: the same softmax serves the hard labels
        loss = loss + hard_weight * (lse - label_u).sum()
    elif ce_loss is not None:
        loss = loss + hard_weight * ce_loss
    if not want_grad:
        return loss, None
    live_rest = (t_rest > 0) & (s_rest_raw >= _REST_FLOOR)  # where the rest term has a slope
    a = torch.where(live_rest, t_rest / s_rest, 0.0)  # (c,)
    coef = p_k.sum(-1) - a * s_k.sum(-1)  # (c,): P - a S
    k_scale = scale / temperature  # d/dlogits = (d/du) / T
    same_softmax = hard_weight if label_u is not None else 0.0  # + h (softmax - onehot) at T = 1
    grad = probs.mul_((k_scale * coef + same_softmax)[:, None] / row_sum)  # (c, vocab), in place
    grad.scatter_add_(1, ids, k_scale * torch.where(listed, a[:, None] * s_k - p_k, 0.0))
    if label_u is not None:
        grad.scatter_add_(1, labels[:, None], torch.full_like(row_sum, -hard_weight))
    elif ce_grad is not None:
        grad.add_(ce_grad, alpha=hard_weight)
    return loss, grad


def _cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, want_grad: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(summed cross-entropy, its gradient softmax - onehot (c, vocab) or None); consumes logits."""
    label_logit = logits.gather(1, labels[:, None])  # (c, 1)
    row_max = logits.amax(dim=-1, keepdim=True)  # (c, 1)
    probs = logits.sub_(row_max).exp_()  # (c, vocab)
    row_sum = probs.sum(dim=-1, keepdim=True)  # (c, 1)
    loss = (row_max + row_sum.log() - label_logit).sum()
    if not want_grad:
        return loss, None
    grad = probs.div_(row_sum)
    grad.scatter_add_(1, labels[:, None], torch.full_like(row_sum, -1.0))
    return loss, grad


@torch.compiler.disable  # a Python loop over chunks; eager is what makes it cheap
def linear_sparse_kl(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    teacher_ids: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float = 1.0,
    hard_weight: float = 0.0,
    rows: int | None = None,
) -> torch.Tensor:
    """Summed over positions: (1 - h) sparse_forward_kl(hidden @ weight.T, top-k) + h CE(labels),
    from hidden (N, dim), the head weight (vocab, dim), the teacher's ids and log-probs (N, k)
    and the labels (N,); () with gradients for hidden and weight."""
    if hidden.dim() != 2 or teacher_ids.shape != teacher_logprobs.shape:
        raise ValueError("hidden (N, dim) and teacher ids / log-probs of one shape (N, k)")
    if not hidden.shape[0] == teacher_ids.shape[0] == labels.shape[0]:
        raise ValueError(f"{hidden.shape[0]} hidden rows, {teacher_ids.shape[0]} teacher rows, "
                         f"{labels.shape[0]} labels")  # fmt: skip
    device_type = hidden.device.type
    compute_dtype = _autocast_dtype(device_type) or hidden.dtype
    settings = (
        float(temperature), float(hard_weight), compute_dtype,
        rows or chunk_rows(weight.shape[0], device_type), torch.is_grad_enabled(),
    )  # fmt: skip
    with torch.autocast(device_type, enabled=False):
        return _LinearSparseKL.apply(
            hidden, weight, teacher_ids, teacher_logprobs, labels, settings
        )


def plain_head_weight(model: torch.nn.Module) -> torch.Tensor | None:
    """The LM head's weight (vocab, dim) when the head is a plain linear map of the final hidden
    states (no bias, soft-cap, LoRA or quantization), else None: the fused loss applies."""
    config = getattr(model, "config", None)
    head = getattr(model, "lm_head", None)
    if config is None or type(head) is not torch.nn.Linear or head.bias is not None:
        return None
    if getattr(config, "lm_head_bias", False) or getattr(config, "final_softcap", 0.0):
        return None
    return head.weight
