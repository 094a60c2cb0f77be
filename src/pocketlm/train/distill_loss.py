"""Distillation losses: how far a student's next-token (or class) distribution is from a
teacher's, per position. Pure functions of logits; position_losses mixes one with the hard
labels' cross-entropy as `pocketlm distill` asks, the tasks choose what to sum.

    forward_kl   KL(teacher || student): the student covers every mode the teacher has
                 (Hinton et al. 2015; scaled by T² so gradients keep their size as T grows)
    reverse_kl   KL(student || teacher): mode-seeking, what on-policy distillation favours
    jsd          generalised Jensen-Shannon of weight β (Agarwal et al. 2024, GKD):
                 β KL(teacher || m) + (1 - β) KL(student || m), m = β teacher + (1 - β) student;
                 β → 0 tends to forward KL's behaviour, β → 1 to reverse KL's (both scaled by β)
    tv           total variation ½ Σ |teacher - student|: bounded, robust to teacher noise

A teacher known only by its top-k log-probabilities (a cache, an API's `top_logprobs`) is
compared over k + 1 outcomes: the k tokens and "everything else", whose probability is what the
k leave over, for the teacher and for the student alike (sparse_forward_kl). Nothing is
renormalised away: mass the teacher did not list is still mass the student must match.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

KINDS = ("forward_kl", "reverse_kl", "jsd", "tv")


def distill_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    kind: str = "forward_kl",
    *,
    temperature: float = 1.0,
    beta: float = 0.5,
) -> torch.Tensor:
    """Per-position divergence (...,) between softmax(logits / T) of a teacher and a student,
    both (..., V), computed in fp32; forward/reverse KL and JSD are scaled by T²."""
    if kind not in KINDS:
        raise ValueError(f"unknown distillation loss {kind!r}: choose one of {', '.join(KINDS)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} differ: same vocabulary (trim a padded teacher first)"
        )
    log_s = F.log_softmax(student_logits.float() / temperature, dim=-1)  # (..., V)
    log_t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)  # (..., V)
    scale = temperature**2
    if kind == "forward_kl":
        return _kl(log_t, log_s) * scale
    if kind == "reverse_kl":
        return _kl(log_s, log_t) * scale
    if kind == "tv":
        return 0.5 * (log_t.exp() - log_s.exp()).abs().sum(dim=-1)
    if not 0.0 < beta < 1.0:
        raise ValueError(f"jsd needs 0 < beta < 1, got {beta}")
    # log m = log(β p_t + (1 - β) p_s), computed stably in log space
    log_m = torch.logaddexp(
        log_t + torch.log(torch.tensor(beta)), log_s + torch.log1p(torch.tensor(-beta))
    )
    return (beta * _kl(log_t, log_m) + (1 - beta) * _kl(log_s, log_m)) * scale


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) over the last axis from log-probabilities; 0 · log 0 counts as 0."""
    p = log_p.exp()
    return torch.where(p > 0, p * (log_p - log_q), 0.0).sum(dim=-1)


def sparse_forward_kl(
    student_logits: torch.Tensor,
    teacher_ids: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    *,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Per-position KL(teacher || student) (...,) over the teacher's top-k tokens plus one
    outcome for the rest, from student logits (..., V), teacher ids (..., k) and the teacher's
    log-probabilities at them (..., k), taken as given at temperature 1 (a cache or an API
    stores them so): the student is tempered, the teacher's rest is 1 - Σ p_k (clamped at 0).
    An entry at -inf is no entry (padding of fewer than k, an API's null): its id's student
    mass stays in the rest."""
    if teacher_ids.shape != teacher_logprobs.shape:
        raise ValueError("teacher ids and log-probabilities must have the same shape")
    log_s = F.log_softmax(student_logits.float() / temperature, dim=-1)  # (..., V)
    log_s_k = log_s.gather(-1, teacher_ids.long())  # (..., k)
    log_t_k = teacher_logprobs.float()  # (..., k)
    listed = log_t_k > float("-inf")  # (..., k)
    t_rest = (1.0 - log_t_k.exp().sum(dim=-1)).clamp(min=0.0)  # (...,)
    s_listed = torch.where(listed, log_s_k.exp(), 0.0).sum(dim=-1)  # (...,)
    s_rest = (1.0 - s_listed).clamp(min=1e-12)  # (...,)
    listed = torch.where(log_t_k.exp() > 0, log_t_k.exp() * (log_t_k - log_s_k), 0.0).sum(-1)
    rest = torch.where(t_rest > 0, t_rest * (t_rest.clamp(min=1e-12).log() - s_rest.log()), 0.0)
    return (listed + rest) * temperature**2


def top_k_logprobs(teacher_logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's k most likely tokens per position and their log-probabilities at
    temperature 1, as a cache stores them: (ids (..., k) int64, most likely first; log-probs
    (..., k) float16). The one rounding a live top-k teacher and a cache share, so training from
    either computes the same loss."""
    if not 1 <= k <= teacher_logits.shape[-1]:
        raise ValueError(f"top-k must be in 1..{teacher_logits.shape[-1]}, got {k}")
    log_t = F.log_softmax(teacher_logits.float(), dim=-1)  # (..., V)
    logprobs, ids = log_t.topk(k, dim=-1)  # (..., k) each, sorted
    return ids, logprobs.to(torch.float16)


def hidden_cosine_loss(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor) -> torch.Tensor:
    """Per-position 1 - cos(student, teacher) (...,) of hidden states (..., dim) of equal width
    (DistilBERT's alignment of the student's states with its teacher's)."""
    if student_hidden.shape[-1] != teacher_hidden.shape[-1]:
        raise ValueError(
            f"hidden widths differ ({student_hidden.shape[-1]} vs {teacher_hidden.shape[-1]}): "
            "the cosine loss needs a student as wide as its teacher"
        )
    return 1.0 - F.cosine_similarity(student_hidden.float(), teacher_hidden.float(), dim=-1)


def position_losses(
    student_logits: torch.Tensor,
    teacher: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
    labels: torch.Tensor | None,
    settings: Any,
) -> torch.Tensor:
    """Per-position loss (N,) from the student's logits (N, V), the teacher's logits (N, V) or
    top-k (ids (N, k), log-probs (N, k)[, valid (N,)]), and the labels (N,) (None: on-policy
    positions, the divergence alone); settings: loss, temperature, beta, hard_weight (a
    DistillConfig)."""
    valid = None  # (N,) where a stored teacher has a target (absent: everywhere)
    if isinstance(teacher, tuple):
        ids, logprobs, *rest = teacher
        valid = rest[0] if rest else None
        divergence = sparse_forward_kl(
            student_logits, ids, logprobs, temperature=settings.temperature
        )
    else:
        divergence = distill_loss(
            student_logits, teacher, settings.loss,
            temperature=settings.temperature, beta=settings.beta,
        )  # fmt: skip
    if labels is None:
        return divergence
    h = settings.hard_weight
    loss = (1.0 - h) * divergence if h < 1.0 else torch.zeros_like(divergence)
    if h > 0.0 or valid is not None:
        ce = F.cross_entropy(student_logits.float(), labels, reduction="none")
        loss = loss + h * ce if h > 0.0 else loss
        loss = loss if valid is None else torch.where(valid, loss, ce)  # no target: CE alone
    return loss
