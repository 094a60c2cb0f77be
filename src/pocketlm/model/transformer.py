"""THE model: a Llama-compatible decoder (RMSNorm, RoPE, SwiGLU, GQA, tied or untied embeddings).

Parameter names are exactly those of `transformers`' LlamaForCausalLM, so a state dict moves
between the two unchanged. Attention runs through PocketLM's own CPU kernels where they apply
(model/native_attention.py) and scaled_dot_product_attention (flash kernels where the device
has them) everywhere else. The KV cache is passed in by the caller.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pocketlm.model import native_attention
from pocketlm.model.config import ModelConfig
from pocketlm.model.kv_cache import KVCache
from pocketlm.model.linear_cross_entropy import IGNORE_INDEX, linear_cross_entropy
from pocketlm.model.moe import MoE
from pocketlm.model.quantized import QuantizedLinear


class RMSNorm(nn.Module):
    """Root-mean-square norm computed in fp32 (as in Llama), scaled by a learned weight."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)


def rope_tables(head_dim: int, max_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin, each (max_len, head_dim), in the rotate-half layout Llama uses."""
    inv_freq = 1.0 / (
        theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    )  # (head_dim/2,)
    freqs = torch.outer(
        torch.arange(max_len, dtype=torch.float32), inv_freq
    )  # (max_len, head_dim/2)
    emb = torch.cat([freqs, freqs], dim=-1)  # (max_len, head_dim)
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (..., head_dim) by cos/sin broadcastable to it: (B, 1, T, hd) for (B, H, T, hd)."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class Attention(nn.Module):
    """Grouped-query self-attention with rotary positions."""

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads = config.n_heads
        self.n_kv_heads = config.n_kv_heads
        self.head_dim = config.resolved_head_dim
        self.q_proj = nn.Linear(config.dim, config.q_dim, bias=config.qkv_bias)
        self.k_proj = nn.Linear(config.dim, config.kv_dim, bias=config.qkv_bias)
        self.v_proj = nn.Linear(config.dim, config.kv_dim, bias=config.qkv_bias)
        self.o_proj = nn.Linear(config.q_dim, config.dim, bias=False)
        self.dropout = config.dropout
        # "auto": PocketLM's CPU kernels where they apply (model/native_attention.py), else SDPA
        self.kernel = "auto"

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cache: KVCache | None,
        positions: torch.Tensor | None,
        uniform: int | None,
    ) -> torch.Tensor:
        batch, seq, _ = x.shape
        q = self.q_proj(x).view(batch, seq, self.n_heads, self.head_dim)  # (B, T, H, hd)
        k = self.k_proj(x).view(batch, seq, self.n_kv_heads, self.head_dim)  # (B, T, KV, hd)
        v = self.v_proj(x).view(batch, seq, self.n_kv_heads, self.head_dim)  # (B, T, KV, hd)
        dropout = self.dropout if self.training else 0.0
        if (
            cache is None  # so cos/sin are (1, 1, T, hd)
            and self.kernel == "auto"
            and native_attention.applies(q, dropout)
        ):
            # (1, 1, T, hd) -> (1, T, 1, hd): rotate in the (B, T, H, hd) layout the kernels read
            cos_t, sin_t = cos.transpose(1, 2), sin.transpose(1, 2)
            out = native_attention.causal_attention(
                apply_rope(q, cos_t, sin_t), apply_rope(k, cos_t, sin_t), v
            )  # (B, T, H, hd)
            return self.o_proj(out.reshape(batch, seq, self.n_heads * self.head_dim))
        q = apply_rope(q.transpose(1, 2), cos, sin)  # (B, H, T, hd)
        k = apply_rope(k.transpose(1, 2), cos, sin)  # (B, KV, T, hd)
        v = v.transpose(1, 2)  # (B, KV, T, hd)
        mask = None
        causal = True
        if cache is not None:
            fresh_prefill = uniform == 0
            k_all, v_all = cache.write(self.layer_idx, k, v, positions, uniform)
            if not fresh_prefill:
                k, v = k_all, v_all
                causal = False
                if uniform is None or seq > 1:
                    # Key j is visible to the query at position p iff j <= p: causal and row-length aware.
                    key_pos = torch.arange(k.shape[2], device=x.device)  # (S,)
                    mask = (
                        key_pos[None, None, None, :] <= positions[:, None, :, None]
                    )  # (B, 1, T, S)
        if self.n_kv_heads != self.n_heads:
            rep = self.n_heads // self.n_kv_heads
            # (B, KV, S, hd) -> (B, H, S, hd): each kv head serves `rep` query heads.
            k = (
                k[:, :, None]
                .expand(batch, self.n_kv_heads, rep, k.shape[2], self.head_dim)
                .reshape(batch, self.n_heads, k.shape[2], self.head_dim)
            )
            v = (
                v[:, :, None]
                .expand(batch, self.n_kv_heads, rep, v.shape[2], self.head_dim)
                .reshape(batch, self.n_heads, v.shape[2], self.head_dim)
            )
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=dropout,
            is_causal=causal and mask is None and seq > 1,
        )
        out = out.transpose(1, 2).reshape(batch, seq, self.n_heads * self.head_dim)  # (B, T, H*hd)
        return self.o_proj(out)


class MLP(nn.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.dim, config.resolved_ffn_dim, bias=False)
        self.up_proj = nn.Linear(config.dim, config.resolved_ffn_dim, bias=False)
        self.down_proj = nn.Linear(config.resolved_ffn_dim, config.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    """Pre-norm residual block: attention then MLP."""

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.self_attn = Attention(config, layer_idx)
        self.mlp = MoE(config) if config.n_experts else MLP(config)
        self.input_layernorm = RMSNorm(config.dim, config.norm_eps)
        self.post_attention_layernorm = RMSNorm(config.dim, config.norm_eps)
        self.resid_dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cache: KVCache | None,
        positions: torch.Tensor | None,
        uniform: int | None,
    ) -> torch.Tensor:
        x = x + self.resid_dropout(
            self.self_attn(self.input_layernorm(x), cos, sin, cache, positions, uniform)
        )
        return x + self.resid_dropout(self.mlp(self.post_attention_layernorm(x)))


class Decoder(nn.Module):
    """Embeddings, the layer stack and the final norm (HF's `model.` prefix)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.dim)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.n_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        cos, sin = rope_tables(config.resolved_head_dim, config.max_seq_len, config.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)


class CausalLM(nn.Module):
    """Decoder + LM head. forward(input_ids (B, T), cache?) -> logits (B, T, vocab)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.model = Decoder(config)
        self.lm_head = nn.Linear(config.dim, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(
        self,
        input_ids: torch.Tensor,
        cache: KVCache | None = None,
        *,
        output_positions: torch.Tensor | None = None,
        targets: torch.Tensor | None = None,
        reduction: str = "mean",
    ) -> torch.Tensor:
        """Logits for every position, or only at output_positions (B,) -> (B, vocab).

        With a cache, input_ids are the new tokens of each row, written after the row's
        current length; the cache's lengths advance by T. With targets (B, T) (-100 = no
        target) the result is instead the cross-entropy ("mean" over the targets or their
        "sum"), computed by the LM head fused with the loss so the (B, T, vocab) logits never
        exist at once.
        """
        batch, seq = input_ids.shape
        x = self.model.embed_tokens(input_ids)  # (B, T, dim)
        uniform: int | None = 0
        positions: torch.Tensor | None = None
        if cache is not None:
            uniform = cache.uniform_length()
            positions = cache.positions(seq, input_ids.device)  # (B, T)
        if uniform is not None:
            if uniform + seq > self.config.max_seq_len:
                raise ValueError(
                    f"sequence of {uniform + seq} positions exceeds the model's context of {self.config.max_seq_len}"
                )
            cos = self.model.rope_cos[uniform : uniform + seq].to(x.dtype)[
                None, None
            ]  # (1, 1, T, hd)
            sin = self.model.rope_sin[uniform : uniform + seq].to(x.dtype)[None, None]
        else:
            cos = self.model.rope_cos[positions].to(x.dtype)[:, None]  # (B, 1, T, hd)
            sin = self.model.rope_sin[positions].to(x.dtype)[:, None]
        for layer in self.model.layers:
            x = layer(x, cos, sin, cache, positions, uniform)
        if cache is not None:
            cache.advance(seq)
        if output_positions is not None:
            x = x[torch.arange(batch, device=x.device), output_positions]  # (B, dim)
        if targets is not None:
            return self._loss(self.model.norm(x), targets, reduction)
        return self.lm_head(self.model.norm(x))

    def _loss(self, hidden: torch.Tensor, targets: torch.Tensor, reduction: str) -> torch.Tensor:
        """Cross-entropy of the head's logits; fused unless the head was swapped (LoRA)."""
        if type(self.lm_head) is nn.Linear:
            return linear_cross_entropy(hidden, self.lm_head.weight, targets, reduction=reduction)
        if isinstance(self.lm_head, QuantizedLinear) and self.lm_head.bias is None:
            # a quantized head is frozen (QLoRA): fused over its dequantized weight, a transient
            # copy, instead of (B, T, vocab) logits and their gradient
            weight = self.lm_head.dequantized(hidden.dtype)  # (vocab, dim)
            return linear_cross_entropy(hidden, weight, targets, reduction=reduction)
        logits = self.lm_head(hidden)  # (B, T, vocab)
        summed = F.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]),
            targets.reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )
        if reduction == "sum":
            return summed
        return summed / (targets != IGNORE_INDEX).sum().clamp(min=1)  # no targets: 0, as fused

    def num_params(self) -> int:
        """Unique parameters (tied weights counted once)."""
        return sum(p.numel() for p in {id(p): p for p in self.parameters()}.values())


def set_attention_kernel(model: nn.Module, kind: str) -> None:
    """Choose the attention kernel of every layer: "auto" (native on CPU where it applies) or "sdpa"."""
    if kind not in native_attention.KERNELS:
        raise ValueError(
            f"attention kernel {kind!r}: choose one of {', '.join(native_attention.KERNELS)}"
        )
    for module in model.modules():
        if isinstance(module, Attention):
            module.kernel = kind


def init_weights(model: CausalLM, seed: int = 0) -> CausalLM:
    """Normal(0, init_std) weights, residual projections scaled by 1/sqrt(2 * n_layers), ones for norms."""
    generator = torch.Generator().manual_seed(seed)
    std = model.config.init_std
    residual_std = std / math.sqrt(2 * model.config.n_layers)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            elif name.endswith(".bias"):
                param.zero_()
            else:
                s = residual_std if name.endswith(("o_proj.weight", "down_proj.weight")) else std
                # Draw on CPU with the explicit generator, then copy: same weights on every device.
                param.copy_(torch.normal(0.0, s, size=param.shape, generator=generator))
    return model


def materialize(model: CausalLM, device: torch.device | str = "cpu") -> CausalLM:
    """Give a meta-device model real (uninitialised) storage, rebuild rope tables, re-tie embeddings."""
    config = model.config
    model = model.to_empty(device=device)
    cos, sin = rope_tables(config.resolved_head_dim, config.max_seq_len, config.rope_theta)
    model.model.rope_cos, model.model.rope_sin = cos.to(device), sin.to(device)
    if config.tie_embeddings:
        retie(model)
    return model


def retie(model: CausalLM) -> None:
    """Make the LM head share the embedding's storage again (after to_empty / surgery)."""
    emb = model.model.embed_tokens
    if isinstance(emb, nn.Embedding):
        model.lm_head.weight = emb.weight
    else:  # quantized: the head's qweight/scales buffers are the embedding table's
        model.lm_head.qweight = emb.qweight
        model.lm_head.scales = emb.scales


def build_model(
    config: ModelConfig, *, seed: int = 0, device: torch.device | str = "cpu"
) -> CausalLM:
    """A freshly initialised model on `device` (weights drawn on CPU: identical on every device)."""
    with torch.device("meta"):
        model = CausalLM(config)
    return init_weights(materialize(model), seed).to(device)
