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
