"""Rotary position embeddings: inverse frequencies per scaling kind, cos/sin at given positions.

Frequencies follow `transformers` (modeling_rope_utils) operation for operation, so that an imported
model's logits match: "none" (theta ** (-2i/d)), "linear" (divided by rope_factor), "llama3" (long
wavelengths divided by rope_factor, a smooth ramp between low_freq_factor and high_freq_factor) and
"longrope" (Phi-3: each frequency divided by its short or long factor, cos and sin multiplied by
sqrt(1 + ln(factor) / ln(original_max_len))). cos/sin are computed from the positions at each call
(one fp32 multiply and a cos per element: bit-identical to a precomputed table, without its memory).

Which longrope factors apply is decided per forward call, as transformers 5 does: the long factors
for EVERY position of the call when the call's last position is at or past rope_original_max_len
(max position + 1 > original), else the short factors. With a KV cache, keys cached by earlier
calls keep the factors they were rotated with, so decoding across the boundary differs from one
full forward over the same tokens, exactly as it does in transformers.

Only the first `rotary_dim` dimensions of each head rotate (Phi's partial rotary); the rest pass.
"""

from __future__ import annotations

import math

import torch

from pocketlm.model.config import ModelConfig

# The rope sets a model may hold: the global one, the long-context one (longrope) and the one of
# sliding-window layers when it has its own base (Gemma 3). Buffers are named rope_inv_freq_<set>.
GLOBAL, LONG, LOCAL = "global", "long", "local"


def default_inv_freq(rotary_dim: int, theta: float) -> torch.Tensor:
    """theta ** (-2i / rotary_dim) for i < rotary_dim / 2, float32."""
    return 1.0 / (theta ** (torch.arange(0, rotary_dim, 2, dtype=torch.float32) / rotary_dim))


def _llama3_inv_freq(inv_freq: torch.Tensor, c: ModelConfig) -> torch.Tensor:
    """Llama 3.1's frequency scaling (transformers' _compute_llama3_parameters)."""
    factor, low, high = c.rope_factor, c.rope_low_freq_factor, c.rope_high_freq_factor
    old_context = c.rope_original_max_len
    low_freq_wavelen, high_freq_wavelen = old_context / low, old_context / high
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_context / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def _longrope_inv_freq(c: ModelConfig, factors: tuple[float, ...]) -> torch.Tensor:
    """1 / (factor_i * theta ** (2i / rotary_dim)) (transformers' _compute_longrope_parameters)."""
    dim = c.resolved_rotary_dim
    ext = torch.tensor(factors, dtype=torch.float32)
    shape = torch.arange(0, dim, 2, dtype=torch.int64).float() / dim
    return 1.0 / (ext * c.rope_theta**shape)


def attention_factor(config: ModelConfig) -> float:
    """What cos and sin are multiplied by: longrope's sqrt(1 + ln(factor) / ln(original)), else 1."""
    c = config
    if c.rope_scaling != "longrope" or c.rope_factor <= 1.0:
        return 1.0
    return math.sqrt(1 + math.log(c.rope_factor) / math.log(c.rope_original_max_len))


def rope_buffers(config: ModelConfig) -> dict[str, torch.Tensor]:
    """rope_inv_freq_<set> -> (rotary_dim / 2,) float32 for every rope set the model uses (none
    with learned positions)."""
    c = config
    if c.position_kind != "rope":
        return {}
    dim = c.resolved_rotary_dim
    if c.rope_scaling == "longrope":
        out = {
            GLOBAL: _longrope_inv_freq(c, c.rope_short_factor),
            LONG: _longrope_inv_freq(c, c.rope_long_factor),
        }
    else:
        inv_freq = default_inv_freq(dim, c.rope_theta)
        if c.rope_scaling == "linear":
            inv_freq = inv_freq / c.rope_factor
        elif c.rope_scaling == "llama3":
            inv_freq = _llama3_inv_freq(inv_freq, c)
        out = {GLOBAL: inv_freq}
    if c.rope_local_theta:  # Gemma 3: sliding layers rotate with their own base, unscaled
        out[LOCAL] = default_inv_freq(dim, c.rope_local_theta)
    return {f"rope_inv_freq_{name}": t for name, t in out.items()}


def layer_rope_set(config: ModelConfig, layer: int) -> str:
    """The rope set a layer rotates with: LOCAL for sliding layers with their own base, else GLOBAL."""
    if config.rope_local_theta and config.layer_kind(layer) == "sliding":
        return LOCAL
    return GLOBAL


def cos_sin(
    inv_freq: torch.Tensor, positions: torch.Tensor, dtype: torch.dtype, scale: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (B, 1, T, rotary_dim) in `dtype` for int positions (B, T), rotate-half layout."""
    freqs = positions[..., None].float() * inv_freq.float()  # (B, T, rotary_dim/2)
    emb = torch.cat([freqs, freqs], dim=-1)  # (B, T, rotary_dim)
    cos, sin = emb.cos(), emb.sin()
    if scale != 1.0:
        cos, sin = cos * scale, sin * scale
    return cos.to(dtype)[:, None], sin.to(dtype)[:, None]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first cos.shape[-1] dims of x (..., head_dim) by cos/sin broadcastable to them:
    (B, 1, T, rd) for (B, H, T, hd). The remaining dims (partial rotary) pass unchanged."""
    rotary = cos.shape[-1]
    if rotary < x.shape[-1]:
        return torch.cat([apply_rope(x[..., :rotary], cos, sin), x[..., rotary:]], dim=-1)
    half = rotary // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin
