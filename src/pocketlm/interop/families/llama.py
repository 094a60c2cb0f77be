"""Llama 2 / 3.x (and SmolLM2, which is Llama) and Mistral, as data."""

from __future__ import annotations

from pocketlm.interop.families.names import GGUF, LLAMA_HF
from pocketlm.interop.families.spec import FamilySpec

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
    gguf_arch="llama",
    gguf_names=GGUF,
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
    gguf_arch="llama",  # llama.cpp runs Mistral as llama
    gguf_names=GGUF,
)
