"""Small model directories in every precision, shared by the native-backend, loader-fuzz and
AddressSanitizer tests."""

from __future__ import annotations

from pathlib import Path

import torch

from pocketlm.checkpoint.model_io import save_model
from pocketlm.model.config import ModelConfig
from pocketlm.model.transformer import build_model

SCHEMES = ("bf16", "int8", "int4")
# Tied embeddings, grouped-query attention.
TIED = ModelConfig(
    vocab_size=512, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128, max_seq_len=64
)
# Untied, q/k/v biases, and head_dim 32 so that q_dim (128) exceeds dim (64) and ffn_dim (96).
WIDE = ModelConfig(
    vocab_size=512, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=32, ffn_dim=96,
    max_seq_len=64, tie_embeddings=False, qkv_bias=True,
)  # fmt: skip
# Many family options at once (the native engine's every optional path): Gemma's (1 + w) norms,
# q/k norms, sandwich norms, soft-caps, scales and local/global layers, longrope with partial
# rotary, biases, an untied head with a bias, and a mixture of experts with a shared expert.
MANY = ModelConfig(
    vocab_size=512, dim=64, n_layers=2, n_heads=4, n_kv_heads=1, head_dim=32, max_seq_len=64,
    tie_embeddings=False, qkv_bias=True, o_bias=True, lm_head_bias=True, norm_offset=1.0,
    activation="gelu_tanh", qk_norm=True, rotary_dim=16, rope_scaling="longrope", rope_factor=4.0,
    rope_original_max_len=24, rope_short_factor=(1.0,) * 8, rope_long_factor=(2.0,) * 8,
    rope_local_theta=10000.0, sliding_window=8, layer_types=("sliding", "full"), embed_scale=8.0,
    attn_scale=0.1, attn_softcap=5.0, final_softcap=3.0, sandwich_norms=True, n_experts=4,
    n_experts_per_token=2, expert_ffn_dim=32, shared_expert_ffn_dim=64,
)  # fmt: skip
# Phi-2's block (LayerNorm, parallel attention and plain GELU MLP, biases everywhere) with a tied
# head that has a bias, and Llama 3 rope scaling.
PARALLEL = ModelConfig(
    vocab_size=512, dim=64, n_layers=2, n_heads=4, n_kv_heads=4, ffn_dim=96, max_seq_len=64,
    norm_kind="layer", mlp_kind="plain", activation="gelu", parallel_block=True, qkv_bias=True,
    o_bias=True, mlp_bias=True, lm_head_bias=True, rotary_dim=8, rope_scaling="llama3",
    rope_factor=8.0, rope_original_max_len=16,
)  # fmt: skip


def save_variants(
    root: Path, name: str, config: ModelConfig, tokenizer: Path, schemes=SCHEMES, seed: int = 1
) -> dict[str, Path]:
    """{"fp32": dir, scheme: dir, ...} of one random model; its biases are random too (not the
    zeros build_model starts them at), so that a misread bias changes the logits."""
    from pocketlm.compress.quantize import quantize_model_dir

    model = build_model(config, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=gen))
    out = {"fp32": save_model(root / f"{name}-fp32", model, tokenizer)}
    for scheme in schemes:
        out[scheme], _ = quantize_model_dir(out["fp32"], root / f"{name}-{scheme}", scheme)
    return out
