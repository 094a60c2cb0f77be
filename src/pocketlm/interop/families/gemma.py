"""Gemma, Gemma 2 and Gemma 3 (text-only: Gemma3ForCausalLM / gemma3_text), as data.

All: (1 + w) RMSNorm with the 1 added in fp32, embeddings scaled by sqrt(hidden_size) in the model's
dtype, GeGLU with the tanh GELU, tied embeddings. Gemma 2: sandwich norms, query_pre_attn_scalar,
attention and final soft-caps, alternating sliding/full layers. Gemma 3: q/k norms, a rope base of
its own for the sliding layers (5 sliding to 1 full), no attention soft-cap. Norm weights are
stored as transformers stores them (w, not 1 + w).
"""

from __future__ import annotations

from pocketlm.interop.families.names import GGUF, LLAMA_HF, SANDWICH_HF
from pocketlm.interop.families.spec import FamilySpec, GgufSpec
from pocketlm.model.config import ModelConfig

_DEFAULTS = {
    "num_key_value_heads": 16,
    "head_dim": 256,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "tie_word_embeddings": True,
    "attention_bias": False,
    "use_bidirectional_attention": None,
    "initializer_range": 0.02,
}


def _embed_scale(c: ModelConfig) -> float:
    return c.dim**0.5  # llama.cpp's Gemma graphs scale embeddings by sqrt(n_embd), implicitly


def _query_scale(big_layers: int):
    """llama.cpp's Gemma 2/3 query scale: 1/sqrt(head_dim), but 1/sqrt(dim / heads) for the 27B
    (recognised by its layer count), whatever query_pre_attn_scalar says."""

    def scale(c: ModelConfig) -> float:
        if c.n_layers == big_layers:
            return (c.dim / c.n_heads) ** -0.5
        return c.resolved_head_dim**-0.5

    return scale


_GEMMA_FIXED = {"activation": "gelu_tanh", "embed_scale": _embed_scale}
_GEMMA = {"norm_offset": 1.0}
_SANDWICH = {**_GEMMA, "sandwich_norms": True}

GEMMA = FamilySpec(
    name="gemma",
    architectures=("GemmaForCausalLM",),
    model_types=("gemma",),
    defaults={**_DEFAULTS, "hidden_act": "gelu_pytorch_tanh"},
    fixed=_GEMMA,
    activations={"gelu": "gelu_tanh"},  # transformers reads Gemma's legacy "gelu" as tanh GELU
    rope_types=("default", "linear"),
    bias_flags={"attention_bias": ("qkv_bias", "o_bias")},
    refused={"use_bidirectional_attention": (None, False)},
    gemma=1,
    hf_names=LLAMA_HF,
    gguf=GgufSpec(  # src/models/gemma.cpp: tied embeddings only (output is token_embd)
        arch="gemma",
        names=GGUF,
        options=frozenset({"qkv_bias"}),
        fixed=_GEMMA_FIXED,
        head="tied",
    ),
)

GEMMA2 = FamilySpec(
    name="gemma2",
    architectures=("Gemma2ForCausalLM",),
    model_types=("gemma2",),
    defaults={
        **_DEFAULTS,
        "num_key_value_heads": 4,
        "hidden_activation": "gelu_pytorch_tanh",
        "query_pre_attn_scalar": 256,
        "sliding_window": 4096,
        "final_logit_softcapping": 30.0,
        "attn_logit_softcapping": 50.0,
    },
    fixed=_SANDWICH,
    activation_key="hidden_activation",
    rope_types=("default", "linear"),
    bias_flags={"attention_bias": ("qkv_bias", "o_bias")},
    refused={"use_bidirectional_attention": (None, False)},
    windows="layer_types",
    window_pattern=2,
    gemma=2,
    hf_names=SANDWICH_HF,
    # src/models/gemma2.cpp: both soft-caps always applied, sandwich norms, sliding layers from
    # the sliding_window_pattern array, tied embeddings only
    gguf=GgufSpec(
        arch="gemma2",
        names=GGUF,
        options=frozenset({"qkv_bias", "sliding_window", "layer_types"}),
        always=frozenset({"sandwich_norms", "attn_softcap", "final_softcap"}),
        fixed=_GEMMA_FIXED,
        head="tied",
        query_scale=_query_scale(46),
    ),
)

GEMMA3 = FamilySpec(
    name="gemma3",
    architectures=("Gemma3ForCausalLM",),
    model_types=("gemma3_text",),
    classifier_arch="Gemma3TextForSequenceClassification",  # Gemma3For... is the multimodal one
    defaults={
        **_DEFAULTS,
        "num_key_value_heads": 4,
        "max_position_embeddings": 131072,
        "hidden_activation": "gelu_pytorch_tanh",
        "rope_theta": 1_000_000.0,
        "rope_local_base_freq": 10_000.0,
        "query_pre_attn_scalar": 256,
        "sliding_window": 4096,
        "final_logit_softcapping": None,
        "use_bidirectional_attention": False,
    },
    fixed={**_SANDWICH, "qk_norm": True},
    activation_key="hidden_activation",
    rope_types=("default", "linear"),
    bias_flags={"attention_bias": ("qkv_bias", "o_bias")},
    refused={"use_bidirectional_attention": (False, None)},
    windows="layer_types",
    window_pattern=6,
    gemma=3,
    hf_names=SANDWICH_HF,
    # src/models/gemma3.cpp: q/k norms, sandwich norms, a rope base of its own for sliding
    # layers (rope.freq_base_swa, unscaled), optional final soft-cap, no attention soft-cap
    gguf=GgufSpec(
        arch="gemma3",
        names=GGUF,
        options=frozenset(
            {"qkv_bias", "sliding_window", "layer_types", "rope_local_theta", "final_softcap"}
        ),
        always=frozenset({"qk_norm", "sandwich_norms"}),
        fixed=_GEMMA_FIXED,
        query_scale=_query_scale(62),
    ),
)
