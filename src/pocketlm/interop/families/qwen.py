"""Qwen2 / Qwen2.5 (q/k/v biases) and Qwen3 (per-head q/k norms), as data."""

from __future__ import annotations

from pocketlm.interop.families.names import GGUF, LLAMA_HF
from pocketlm.interop.families.spec import FamilySpec, GgufSpec

_DEFAULTS = {
    "num_key_value_heads": 32,
    "head_dim": None,
    "max_position_embeddings": 32768,
    "hidden_act": "silu",
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "use_sliding_window": False,
    "sliding_window": 4096,
    "max_window_layers": 28,
    "initializer_range": 0.02,
}

QWEN2 = FamilySpec(
    name="qwen2",
    architectures=("Qwen2ForCausalLM",),
    model_types=("qwen2",),
    defaults=_DEFAULTS,
    fixed={"qkv_bias": True},
    rope_types=("default", "linear"),
    windows="qwen",
    hf_names=LLAMA_HF,
    gguf=GgufSpec(  # src/models/qwen2.cpp: no o_proj bias, full rotary, attn_output [dim, dim]
        arch="qwen2",
        names=GGUF,
        options=frozenset({"qkv_bias", "lm_head_bias"}),
        ignored=frozenset({"sliding_window", "layer_types"}),
        square_attention=True,
    ),
)

QWEN3 = FamilySpec(
    name="qwen3",
    architectures=("Qwen3ForCausalLM",),
    model_types=("qwen3",),
    defaults={**_DEFAULTS, "head_dim": 128, "attention_bias": False},
    fixed={"qk_norm": True},
    rope_types=("default", "linear"),
    bias_flags={"attention_bias": ("qkv_bias", "o_bias")},
    windows="qwen",
    hf_names=LLAMA_HF,
    gguf=GgufSpec(  # src/models/qwen3.cpp: q/k norms always, no o_proj bias
        arch="qwen3",
        names=GGUF,
        options=frozenset({"qkv_bias"}),
        always=frozenset({"qk_norm"}),
        ignored=frozenset({"sliding_window", "layer_types"}),
    ),
)
