"""MobileBERT's layer (ModelConfig.bottleneck_dim): a wide residual stream (dim) around a narrow
block (bottleneck_dim) where attention and the MLPs run.

    inner = norm(dense_in(x))                       dim -> bottleneck_dim
    qk    = norm(dense_qk(x))                       queries and keys read their own bottleneck,
    h     = norm(attn(q=qk, k=qk, v=x) + inner)     values the full-width input
    h     = norm(mlp_j(h) + h)                      for each of the n_ffn - 1 stacked MLPs
    h     = norm(mlp(h) + h)
    out   = norm(dense_out(h) + x)                  bottleneck_dim -> dim

The layout of released MobileBERTs (use_bottleneck, key_query_shared_bottleneck, no bottleneck
attention); every linear has a bias, every norm is post-residual (NoNorm: norm_kind "affine").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch
from torch import nn

from pocketlm.model.attention import Attention
from pocketlm.model.config import ModelConfig
from pocketlm.model.kv_cache import KVCache
from pocketlm.model.norms import make_norm
from pocketlm.model.rope import GLOBAL


class _StackedMLP(nn.Module):
    """One of MobileBERT's stacked feed-forward networks: norm(mlp(h) + h)."""

    def __init__(self, inner: ModelConfig, mlp: Callable[[ModelConfig], nn.Module]) -> None:
        super().__init__()
        self.mlp = mlp(inner)
        self.norm = make_norm(inner, inner.dim)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.norm(self.mlp(h) + h)


class BottleneckLayer(nn.Module):
    """A MobileBERT layer; same call as the model's DecoderLayer (no cache: an encoder's)."""

    def __init__(
        self, config: ModelConfig, layer_idx: int, mlp: Callable[[ModelConfig], nn.Module]
    ) -> None:
        """`mlp` builds the model's MLP for a config (transformer.MLP: passed in, not imported,
        as the model imports this module)."""
        super().__init__()
        wide, narrow = config.dim, config.bottleneck_dim
        # the block's own config: everything at the bottleneck width
        inner = replace(config, dim=narrow, bottleneck_dim=0, n_ffn=1)
        self.bottleneck_in = nn.Linear(wide, narrow)
        self.bottleneck_in_norm = make_norm(config, narrow)
        self.bottleneck_qk = nn.Linear(wide, narrow)
        self.bottleneck_qk_norm = make_norm(config, narrow)
        self.self_attn = Attention(inner, layer_idx)
        self.self_attn.v_proj = nn.Linear(wide, config.q_dim)  # values read the full width
        self.post_attention_layernorm = make_norm(config, narrow)
        self.ffns = nn.ModuleList(_StackedMLP(inner, mlp) for _ in range(config.n_ffn - 1))
        self.mlp = mlp(inner)
        self.post_mlp_layernorm = make_norm(config, narrow)
        self.bottleneck_out = nn.Linear(narrow, wide)
        self.bottleneck_out_norm = make_norm(config, wide)
        self.rope_set = GLOBAL  # (encoders' learned positions: no rotary)
        self.resid_dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor | None,
        sin: torch.Tensor | None,
        cache: KVCache | None,
        positions: torch.Tensor | None,
        uniform: int | None,
        doc_starts: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, T, dim) -> (B, T, dim)."""
        inner = self.bottleneck_in_norm(self.bottleneck_in(x))  # (B, T, bottleneck)
        qk = self.bottleneck_qk_norm(self.bottleneck_qk(x))  # (B, T, bottleneck)
        attn = self.self_attn(qk, cos, sin, cache, positions, uniform, doc_starts, values=x)
        h = self.post_attention_layernorm(self.resid_dropout(attn) + inner)
        for block in self.ffns:
            h = block(h)
        h = self.post_mlp_layernorm(self.resid_dropout(self.mlp(h)) + h)
        return self.bottleneck_out_norm(self.resid_dropout(self.bottleneck_out(h)) + x)
