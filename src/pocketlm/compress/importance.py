"""Activation-based importance of a model's parts on calibration tokens (Minitron style).

One pass of forward hooks, no gradients:
- layer: mean over tokens of 1 - cos(hidden in, hidden out) (a layer that changes nothing scores 0);
- query head: mean L2 norm of the head's attention output, the input of o_proj;
- FFN channel: mean |activation| entering down_proj;
- hidden channel: mean |value| of the residual stream at every layer's input and the last output.
Dead parts (exactly zero activations) score exactly 0, so pruning them away is exact.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from pocketlm.model.transformer import CausalLM


@dataclass(frozen=True)
class Importance:
    """Scores (higher = more important) and the tokens they were measured on."""

    layers: np.ndarray  # (L,)
    heads: np.ndarray  # (L, n_heads)
    ffn: np.ndarray  # (L, ffn_dim)
    dim: np.ndarray  # (dim,)
    tokens: int


@torch.no_grad()
def activation_importance(model: CausalLM, batches: Iterable[torch.Tensor]) -> Importance:
    """Importance of every layer, query head, FFN channel and hidden channel of `model` over the
    token batches (B, T) given."""
    config = model.config
    n_layers, hd = config.n_layers, config.resolved_head_dim
    sums = {
        "layers": torch.zeros(n_layers, dtype=torch.float64),
        "heads": torch.zeros(n_layers, config.n_heads, dtype=torch.float64),
        "ffn": torch.zeros(n_layers, config.resolved_ffn_dim, dtype=torch.float64),
        "dim": torch.zeros(config.dim, dtype=torch.float64),
    }

    def on_layer(i: int):
        def hook(module, args, output) -> None:
            x_in, x_out = args[0].float(), output.float()  # (B, T, dim)
            sums["layers"][i] += (1 - F.cosine_similarity(x_in, x_out, dim=-1)).sum().double()
            sums["dim"] += x_in.abs().sum(dim=(0, 1)).double()
            if i == n_layers - 1:
                sums["dim"] += x_out.abs().sum(dim=(0, 1)).double()

        return hook

    def on_heads(i: int):
        def hook(module, args) -> None:
            x = args[0].float()
            heads = x.view(*x.shape[:-1], config.n_heads, hd)  # (B, T, H*hd) -> (B, T, H, hd)
            sums["heads"][i] += heads.norm(dim=-1).sum(dim=(0, 1)).double()

        return hook

    def on_ffn(i: int):
        def hook(module, args) -> None:
            sums["ffn"][i] += args[0].float().abs().sum(dim=(0, 1)).double()  # (B, T, F) -> (F,)

        return hook

    handles = []
    for i, layer in enumerate(model.model.layers):
        handles.append(layer.register_forward_hook(on_layer(i)))
        handles.append(layer.self_attn.o_proj.register_forward_pre_hook(on_heads(i)))
        handles.append(layer.mlp.down_proj.register_forward_pre_hook(on_ffn(i)))
    was_training = model.training
    model.eval()
    tokens = 0
    try:
        for ids in batches:
            # the head at one position only: the scores need the body, not (B, T, vocab) logits
            last = torch.full((ids.shape[0],), ids.shape[1] - 1, dtype=torch.long)
            model(ids, output_positions=last)
            tokens += ids.numel()
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if not tokens:
        raise ValueError("no calibration tokens: the importance of nothing is undefined")
    n_dim_reads = n_layers + 1
    return Importance(
        layers=(sums["layers"] / tokens).numpy(),
        heads=(sums["heads"] / tokens).numpy(),
        ffn=(sums["ffn"] / tokens).numpy(),
        dim=(sums["dim"] / (tokens * n_dim_reads)).numpy(),
        tokens=tokens,
    )
