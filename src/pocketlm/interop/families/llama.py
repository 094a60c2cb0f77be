"""Llama 2 / 3.x (and SmolLM2, which is Llama) and Mistral, as data."""

from __future__ import annotations

from pocketlm.interop.families.names import GGUF, LLAMA_HF
from pocketlm.interop.families.spec import FamilySpec, GgufSpec

# llama.cpp's llama architecture (src/models/llama.cpp): optional q/k/v, o_proj and MLP biases,
# Llama 3 rope as a rope_freqs tensor, Mixtral's experts (renormalised top-k); no sliding window.
GGUF_LLAMA = GgufSpec(
    arch="llama",
    names=GGUF,
    options=frozenset(
        {"qkv_bias", "o_bias", "mlp_bias", "n_experts", "n_experts_per_token", "expert_ffn_dim"}
    ),
    fixed={"router": "softmax_topk"},
    ignored=frozenset({"sliding_window", "layer_types"}),
    rope_kinds=("none", "linear", "llama3"),
    interleaved_rope=True,
    expert_width_is_ffn=True,
)

_DEFAULTS = {
    "num_key_value_heads": None,  # = num_attention_heads
    "head_dim": None,  # = hidden_size // num_attention_heads
    "hidden_act": "silu",
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "initializer_range": 0.02,
}

LLAMA = FamilySpec(
    name="llama",
    architectures=("LlamaForCausalLM",),
    model_types=("llama",),
    defaults={
        **_DEFAULTS,
        "max_position_embeddings": 2048,
        "attention_bias": False,
        "mlp_bias": False,
    },
    rope_types=("default", "linear", "llama3"),
    bias_flags={"attention_bias": ("qkv_bias", "o_bias"), "mlp_bias": ("mlp_bias",)},
    hf_names=LLAMA_HF,
    gguf=GGUF_LLAMA,
)

MISTRAL = FamilySpec(
    name="mistral",
    architectures=("MistralForCausalLM",),
    model_types=("mistral",),
    defaults={
        **_DEFAULTS,
        "num_key_value_heads": 8,
        "max_position_embeddings": 4096 * 32,
        "sliding_window": 4096,
    },
    rope_types=("default",),
    windows="all",
    hf_names=LLAMA_HF,
    gguf=GGUF_LLAMA,  # llama.cpp runs Mistral as llama
)
