"""Tiny random models of the family option sets `export onnx` must trace, shared by the export and
onnxruntime-backend tests; and a plain onnxruntime loop over an exported decoder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pocketlm.checkpoint.model_io import save_model
from pocketlm.model.config import ModelConfig
from pocketlm.model.transformer import build_model

BASE = dict(vocab_size=512, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128,
            max_seq_len=96, init_std=0.1)  # fmt: skip
# option set -> the ModelConfig keywords beyond BASE
FAMILIES: dict[str, dict] = {
    "llama": {},
    "qwen2_bias": dict(qkv_bias=True, tie_embeddings=False),
    "qwen3_qk_norm": dict(qk_norm=True, head_dim=32, n_kv_heads=1),
    "mistral_window": dict(sliding_window=8),
    # Gemma 3: (1 + w) norms, GeGLU, embedding scale, q/k and sandwich norms, local/global layers
    # with their own rope base, a softmax scale
    "gemma3": dict(
        norm_offset=1.0, activation="gelu_tanh", embed_scale=8.0, qk_norm=True,
        sandwich_norms=True, sliding_window=8, layer_types=("sliding", "full"),
        rope_local_theta=10000.0, rope_theta=1e6, attn_scale=0.2, head_dim=32,
    ),
    # Gemma 2: soft-caps on the scores and the logits, sliding layers
    "gemma2_softcap": dict(
        norm_offset=1.0, activation="gelu_tanh", embed_scale=8.0, sandwich_norms=True,
        attn_softcap=5.0, final_softcap=3.0, sliding_window=8, layer_types=("sliding", "full"),
    ),
    # Phi-2: LayerNorm, parallel block, plain GELU MLP, biases, partial rotary; llama3 scaling
    "phi2_parallel": dict(
        norm_kind="layer", mlp_kind="plain", activation="gelu", parallel_block=True,
        qkv_bias=True, o_bias=True, mlp_bias=True, lm_head_bias=True, rotary_dim=8,
        tie_embeddings=False, rope_scaling="llama3", rope_factor=8.0, rope_original_max_len=16,
        n_kv_heads=4,
    ),
}  # fmt: skip


def save_family(root: Path, name: str, tokenizer: Path, seed: int = 1) -> Path:
    """A model artifact of the named option set, its biases random too (a misread bias shows)."""
    config = ModelConfig(**{**BASE, **FAMILIES[name]})
    model = build_model(config, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith("bias") or (config.norm_offset and pname.endswith("norm.weight")):
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
    return save_model(root / name, model, tokenizer)


def ort_decoder_logits(session, config: dict, tokens: list[int], prefill: int) -> np.ndarray:
    """Logits (len(tokens) - prefill + 1, V) from onnxruntime alone: tokens[:prefill] from an
    empty past, then one token a call with the presents fed back as the past."""
    cache = config["cache"]
    shape = (1, cache["n_kv_heads"], 0, cache["head_dim"])
    past = {n: np.zeros(shape, np.float32) for n in config["inputs"][3:]}
    rows, start, step = [], 0, prefill
    while start < len(tokens):
        ids = np.array([tokens[start : start + step]], dtype=np.int64)  # (1, T)
        end = start + ids.shape[1]
        feeds = {
            "input_ids": ids,
            "attention_mask": np.ones((1, end), np.int64),
            "position_ids": np.arange(start, end, dtype=np.int64)[None],
            **past,
        }
        logits, *presents = session.run(None, feeds)
        past = dict(zip(config["inputs"][3:], presents))
        rows.append(logits[0, -1])
        start, step = end, 1
    return np.stack(rows)


def ort_greedy(session, config: dict, prompt: list[int], n_new: int) -> list[int]:
    """prompt + n_new greedy tokens from onnxruntime alone, decoding one token a call with the
    presents fed back as the past."""
    cache = config["cache"]
    shape = (1, cache["n_kv_heads"], 0, cache["head_dim"])
    past = {n: np.zeros(shape, np.float32) for n in config["inputs"][3:]}
    tokens, step, start = list(prompt), list(prompt), 0
    for _ in range(n_new):
        end = start + len(step)
        logits, *presents = session.run(
            None,
            {
                "input_ids": np.array([step], dtype=np.int64),
                "attention_mask": np.ones((1, end), np.int64),
                "position_ids": np.arange(start, end, dtype=np.int64)[None],
                **past,
            },
        )
        past = dict(zip(config["inputs"][3:], presents))
        tokens.append(int(logits[0, -1].argmax()))
        step, start = tokens[-1:], end
    return tokens
