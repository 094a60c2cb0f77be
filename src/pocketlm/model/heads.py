"""The sequence-classification head: pool one hidden state per row, an optional dense + activation
(BERT's pooler, DistilBERT's pre_classifier), then the score layer. Pure pooling functions; the
model (transformer.py) owns the modules so parameter names stay `pooler.*` and `score.*`."""

from __future__ import annotations

import torch
from torch import nn

from pocketlm.model.config import ModelConfig

_POOLER_ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu}


def pooled_index(attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """(B,) index of the token each row is classified by: its last real token ("last") or its
    first real token ("first"), wherever the padding is (left or right).

    attention_mask (B, T) is true (1) on real tokens; a row without any is refused.
    """
    real = attention_mask.bool()  # (B, T)
    if not bool(real.any(dim=1).all()):
        raise ValueError("every row to classify needs at least one real (unmasked) token")
    positions = torch.arange(real.shape[1], device=real.device).expand_as(real)  # (B, T)
    if pooling == "first":
        return torch.where(real, positions, real.shape[1]).min(dim=1).values
    return torch.where(real, positions, -1).max(dim=1).values


def padding_doc_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) document ids that keep real tokens and padding apart: a run of pads on either side
    is its own document, so the real tokens attend only to each other and their positions start
    at 0 however they are padded (the packed-row path of the model)."""
    real = attention_mask.bool().long()  # (B, T)
    changes = torch.zeros_like(real)
    changes[:, 1:] = (real[:, 1:] != real[:, :-1]).long()
    return changes.cumsum(dim=1)  # (B, T): 0, then +1 at each pad/real boundary


def head_modules(config: ModelConfig) -> dict[str, nn.Module]:
    """The head's modules by attribute name (the model sets them on itself, so the tensors are
    `pooler.weight/bias` and `score.weight/bias`); for a classifier, or an encoder without labels
    (its pooler only, kept for a classifier built on it)."""
    modules: dict[str, nn.Module] = {}
    if config.pooler != "none":
        modules["pooler"] = nn.Linear(config.dim, config.dim)
    if config.labels:
        modules["score"] = nn.Linear(config.dim, len(config.labels), bias=config.classifier_bias)
    return modules


def score_pooled(
    pooled: torch.Tensor, score: nn.Module, pooler: nn.Module | None, activation: str
) -> torch.Tensor:
    """pooled hidden states (B, dim) -> logits (B, n_labels)."""
    if pooler is not None:
        pooled = _POOLER_ACTIVATIONS[activation](pooler(pooled))
    return score(pooled)
