"""Turning a language model into a sequence classifier by module surgery: the same body (its very
tensors, untouched), the LM head dropped, and a fresh score layer (model/heads.py) over the
pooled last real token, as transformers' *ForSequenceClassification decoders have it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch
from torch import nn

from pocketlm.common.errors import ConfigError
from pocketlm.model.heads import head_modules
from pocketlm.model.transformer import CausalLM


def to_classifier(
    model: CausalLM,
    labels: Sequence[str],
    *,
    seed: int = 0,
    std: float | None = None,
    pooling: str = "last",
) -> CausalLM:
    """`model` turned in place into a classifier over `labels` (in logit order), and returned.

    Its config gains the labels (pooler "none", no score bias: a decoder's head), its LM head is
    dropped and a score layer (n_labels x dim) drawn from normal(0, std) by a generator seeded
    with `seed` (std default: the config's init_std, as transformers initialises `score`) takes
    its place, in the dtype and on the device of the body. Every body tensor stays as it is
    (float, quantized or wrapped by LoRA alike).
    """
    config = model.config
    if config.labels:
        raise ConfigError(
            f"the model is already a classifier over {list(config.labels)}: train it as it is, "
            "or start from its language model to classify other labels"
        )
    new_config = replace(
        config, labels=tuple(labels), pooling=pooling, pooler="none", classifier_bias=False
    )
    dtype, device = _body_float(model)
    generator = torch.Generator().manual_seed(seed)
    std = new_config.init_std if std is None else std
    modules = head_modules(new_config)
    with torch.no_grad():
        for module in modules.values():
            module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * std)
            if module.bias is not None:
                module.bias.zero_()
    if hasattr(model, "lm_head"):
        del model.lm_head  # a tied head shares the embedding: the embedding stays
    for name, module in modules.items():
        setattr(model, name, module.to(device=device, dtype=dtype))
    model.config = new_config
    return model


def _body_float(model: CausalLM) -> tuple[torch.dtype, torch.device]:
    """(float dtype, device) the body computes in: its final norm's, else its first float tensor's."""
    tensors = [*model.model.norm.parameters(), *model.model.parameters(), *model.model.buffers()]
    for tensor in tensors:
        if tensor.is_floating_point():
            return tensor.dtype, tensor.device
    return torch.float32, torch.device("cpu")


def head_parameter_modules(model: nn.Module) -> list[nn.Module]:
    """The classifier head's modules (the pooler, when it has one, and the score layer)."""
    found = (getattr(model, "pooler", None), getattr(model, "score", None))
    return [m for m in found if m is not None]
