"""Rotary inverse frequencies of every rope set a config uses, without torch (numpy float32).

The one definition of the frequencies: the native engine takes them as they are (its cos/sin
tables are float32(pos) * inv_freq, as the torch model computes them), and the torch model can
wrap the same arrays (torch.from_numpy) so that both backends rotate by identical angles. Each
formula follows `transformers`' modeling_rope_utils operation for operation in float32:
"none" (theta ** (-2i / rotary_dim)), "linear" (divided by rope_factor), "llama3" (long
wavelengths divided by rope_factor, a smooth ramp between the low and high frequency factors),
"longrope" (each frequency divided by its short or long factor; cos and sin multiplied by the
attention factor). A config with rope_local_theta adds an unscaled set for sliding layers (Gemma 3).

Which longrope set applies is decided per forward call, as transformers does: the long factors
for every token of a call whose last position + 1 exceeds rope_original_max_len
(`long_factors_from`), else the short ones. The backends run a slot again from its first token
when its context grows past that boundary (as transformers' generate does for Phi-3).
"""

from __future__ import annotations

import math

import numpy as np

from pocketlm.model.config import ModelConfig

# The rope sets: the global one, the long-context one (longrope) and the one of sliding-window
# layers when they have their own base (Gemma 3).
GLOBAL, LONG, LOCAL = "global", "long", "local"


def default_inv_freq(rotary_dim: int, theta: float) -> np.ndarray:
    """theta ** (-2i / rotary_dim) for i < rotary_dim / 2, float32 (rotary_dim / 2,)."""
    exponents = np.arange(0, rotary_dim, 2, dtype=np.float32) / np.float32(rotary_dim)
    return np.float32(1.0) / np.power(np.float32(theta), exponents)


def _llama3(inv_freq: np.ndarray, c: ModelConfig) -> np.ndarray:
    """Llama 3.1's frequency scaling (transformers' _compute_llama3_parameters), in float32."""
    factor, low, high = c.rope_factor, c.rope_low_freq_factor, c.rope_high_freq_factor
    old_context = c.rope_original_max_len
    low_freq_wavelen, high_freq_wavelen = old_context / low, old_context / high
    wavelen = np.float32(2 * math.pi) / inv_freq  # (rotary_dim / 2,)
    scaled = np.where(wavelen > low_freq_wavelen, inv_freq / np.float32(factor), inv_freq)
    smooth = (np.float32(old_context) / wavelen - np.float32(low)) / np.float32(high - low)
    smoothed = (1 - smooth) * scaled / np.float32(factor) + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
    return np.where(is_medium, smoothed, scaled).astype(np.float32)


def _longrope(c: ModelConfig, factors: tuple[float, ...]) -> np.ndarray:
    """1 / (factor_i * theta ** (2i / rotary_dim)) (transformers' _compute_longrope_parameters)."""
    dim = c.resolved_rotary_dim
    ext = np.asarray(factors, dtype=np.float32)
    exponents = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
    return np.float32(1.0) / (ext * np.power(np.float32(c.rope_theta), exponents))


def attention_factor(config: ModelConfig) -> float:
    """What cos and sin are multiplied by: longrope's sqrt(1 + ln(factor) / ln(original)), else 1."""
    c = config
    if c.rope_scaling != "longrope" or c.rope_factor <= 1.0:
        return 1.0
    return math.sqrt(1 + math.log(c.rope_factor) / math.log(c.rope_original_max_len))


def long_factors_from(config: ModelConfig) -> int:
    """longrope: a call whose last position + 1 exceeds this uses the long set; 0 = never."""
    return config.rope_original_max_len if config.rope_scaling == "longrope" else 0


def rope_inv_freqs(config: ModelConfig) -> dict[str, np.ndarray]:
    """rope set name -> (rotary_dim / 2,) float32 inverse frequencies, for every set the model uses."""
    c = config
    dim = c.resolved_rotary_dim
    if c.rope_scaling == "longrope":
        out = {GLOBAL: _longrope(c, c.rope_short_factor), LONG: _longrope(c, c.rope_long_factor)}
    else:
        inv_freq = default_inv_freq(dim, c.rope_theta)
        if c.rope_scaling == "linear":
            inv_freq = inv_freq / np.float32(c.rope_factor)
        elif c.rope_scaling == "llama3":
            inv_freq = _llama3(inv_freq, c)
        out = {GLOBAL: inv_freq}
    if c.rope_local_theta:  # sliding layers rotate with their own base, unscaled
        out[LOCAL] = default_inv_freq(dim, c.rope_local_theta)
    return {name: np.ascontiguousarray(f, dtype=np.float32) for name, f in out.items()}


def layer_rope_set(config: ModelConfig, layer: int) -> str:
    """The rope set a layer rotates with: LOCAL for sliding layers with their own base, else GLOBAL."""
    if config.rope_local_theta and config.layer_kind(layer) == "sliding":
        return LOCAL
    return GLOBAL
