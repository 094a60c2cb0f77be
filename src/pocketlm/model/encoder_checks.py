"""The encoder options of ModelConfig (config.py): their checks and the parameter count of
MobileBERT's bottleneck layer. Pure functions over a config, kept apart from config.py's own."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pocketlm.common.errors import ConfigError

if TYPE_CHECKING:  # config.py imports this module
    from pocketlm.model.config import ModelConfig


def check_encoder_options(c: ModelConfig) -> None:
    """Raise ConfigError for encoder options out of range or with options they do not combine with."""
    for name in ("type_vocab_size", "embed_dim", "bottleneck_dim"):
        if getattr(c, name) < 0:
            raise ConfigError(f"model.{name} must be >= 0, got {getattr(c, name)}")
    if c.n_ffn < 1 or (c.n_ffn > 1 and not c.bottleneck_dim):
        raise ConfigError(f"model.n_ffn must be 1, or more in bottleneck layers; got {c.n_ffn}")
    if c.pooler != "none" and not c.labels and c.causal:
        raise ConfigError("model.pooler without model.labels is an encoder's (model.causal false)")
    if not c.causal and c.sliding_window:  # windows are implemented for causal attention
        raise ConfigError("model.sliding_window needs causal attention (model.causal true)")
    encoder_only = {
        "model.shared_layers": c.shared_layers,
        "model.embed_dim": c.embed_dim,
        "model.embed_trigram": c.embed_trigram,
        "model.bottleneck_dim": c.bottleneck_dim,
        "model.norm_kind affine": c.norm_kind == "affine",
        "model.activation relu": c.activation == "relu",
    }
    set_here = [name for name, on in encoder_only.items() if on]
    if c.causal and set_here:
        # a decoder would cache one layer's keys once for all its applications, its LM head
        # would need the projection back to embed_dim, and the native engine runs decoders
        raise ConfigError(f"{', '.join(set_here)}: only for encoders (model.causal false)")
    plain = c.mlp_kind == "plain" and c.qkv_bias and c.o_bias and c.mlp_bias
    if c.bottleneck_dim and not (plain and c.norm_position == "post" and not c.n_experts):
        raise ConfigError(
            "bottleneck layers are MobileBERT's: post-norm, a plain MLP, biases on every linear"
        )
    if c.norm_position == "post" and (c.parallel_block or c.sandwich_norms):
        raise ConfigError(
            "model.norm_position post does not combine with parallel or sandwich blocks"
        )


def bottleneck_layer_params(c: ModelConfig, per_norm: int) -> int:
    """Parameters of one bottleneck layer (model/bottleneck.py: every linear biased)."""
    d, b, f, q = c.dim, c.bottleneck_dim, c.resolved_ffn_dim, c.q_dim
    ends = 2 * (d * b + b + b * per_norm) + (b * d + d + d * per_norm)  # in, q/k, out
    attn = 2 * (b * q + q) + (d * q + q) + (q * b + b) + b * per_norm  # q, k; v; o; norm
    ffns = c.n_ffn * (2 * b * f + f + b + b * per_norm)
    return ends + attn + ffns
