"""A model shape in numbers: parameters, FLOPs per token, KV-cache bytes per token."""

from __future__ import annotations

from typing import Any

from pocketlm.model.config import ModelConfig


def describe(config: ModelConfig, ctx: int | None = None) -> dict[str, Any]:
    """Parameter counts, training/inference FLOPs per token (at ctx) and KV bytes per token."""
    ctx = ctx or config.max_seq_len
    return {
        "params": config.num_params(),
        "params_non_embedding": config.num_params(include_embeddings=False),
        "train_flops_per_token": config.flops_per_token(ctx, training=True),
        "infer_flops_per_token": config.flops_per_token(ctx, training=False),
        "kv_bytes_per_token_fp32": config.kv_bytes_per_token(4),
        "kv_bytes_per_token_bf16": config.kv_bytes_per_token(2),
        "context": ctx,
    }


def format_row(name: str, config: ModelConfig) -> str:
    """One line of the presets table."""
    from pocketlm.common.units import format_bytes, format_count

    d = describe(config)
    shape = f"{config.n_layers}x{config.dim}, {config.n_heads}/{config.n_kv_heads} heads, ffn {config.resolved_ffn_dim}"
    return (
        f"{name:<14}{format_count(d['params']):>8}{format_count(d['params_non_embedding']):>10}  {shape:<32}"
        f"{format_count(d['train_flops_per_token']):>9}{format_count(d['infer_flops_per_token']):>9}{format_bytes(d['kv_bytes_per_token_bf16']):>10}"
    )
