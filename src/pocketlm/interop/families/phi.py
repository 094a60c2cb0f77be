"""Phi-2 (parallel block, LayerNorm, biases everywhere) and Phi-3 / 3.5 / Phi-4-mini (fused
qkv_proj and gate_up_proj, partial rotary, longrope), as data."""

from __future__ import annotations

from pocketlm.interop.families.names import GGUF, GGUF_PHI3, LLAMA_HF
from pocketlm.interop.families.spec import FamilySpec, GgufSpec, NameTable

PHI = FamilySpec(
    name="phi",
    architectures=("PhiForCausalLM",),
    model_types=("phi",),
    defaults={
        "num_key_value_heads": None,
        "head_dim": None,
        "hidden_act": "gelu_new",
        "max_position_embeddings": 2048,
        "layer_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "partial_rotary_factor": 0.5,
        "tie_word_embeddings": False,
        "qk_layernorm": False,
        "initializer_range": 0.02,
    },
    fixed={
        "norm_kind": "layer",
        "mlp_kind": "plain",
        "parallel_block": True,
        "qkv_bias": True,
        "o_bias": True,
        "mlp_bias": True,
        "lm_head_bias": True,
    },
    norm_eps_key="layer_norm_eps",
    rope_types=("default", "linear"),
    qk_norm_flag="qk_layernorm",
    hf_names=NameTable(
        {
            "model.embed_tokens": "model.embed_tokens",
            "model.norm": "model.final_layernorm",
            "lm_head": "lm_head",
            "score": "score",
        },
        {
            "input_layernorm": "input_layernorm",
            "self_attn.q_proj": "self_attn.q_proj",
            "self_attn.k_proj": "self_attn.k_proj",
            "self_attn.v_proj": "self_attn.v_proj",
            "self_attn.o_proj": "self_attn.dense",
            "self_attn.q_norm": "self_attn.q_layernorm",
            "self_attn.k_norm": "self_attn.k_layernorm",
            "mlp.up_proj": "mlp.fc1",
            "mlp.down_proj": "mlp.fc2",
        },
    ),
    # src/models/phi2.cpp: LayerNorm, parallel block, biases on every linear and on the head (an
    # output tensor always, tied or not), partial rotary, the tanh GELU; q/k/v as attn_q/k/v, as
    # llama.cpp's converter writes Hugging Face's Phi-2 (attn_qkv loads too)
    gguf=GgufSpec(
        arch="phi2",
        names=GGUF,
        options=frozenset({"qkv_bias", "rotary_dim"}),
        always=frozenset({"parallel_block", "o_bias", "mlp_bias", "lm_head_bias"}),
        fixed={"norm_kind": "layer", "mlp_kind": "plain", "activation": "gelu_tanh"},
        head="always",
        square_attention=True,
    ),
)

PHI3 = FamilySpec(
    name="phi3",
    architectures=("Phi3ForCausalLM",),
    model_types=("phi3",),
    defaults={
        "num_key_value_heads": None,
        "head_dim": None,
        "hidden_act": "silu",
        "max_position_embeddings": 4096,
        "original_max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "sliding_window": None,
        "initializer_range": 0.02,
    },
    rope_types=("default", "longrope"),
    rope_aliases={"su": "longrope", "yarn": "longrope"},  # transformers reads both as longrope
    original_max_key=True,
    windows="all",
    hf_names=NameTable(
        LLAMA_HF.top,
        LLAMA_HF.layer,
        fused={
            "self_attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
            "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj"),
        },
    ),
    # src/models/phi3.cpp: fused attn_qkv and ffn_up, partial rotary, longrope as
    # rope_factors_long / rope_factors_short; its sliding window is switched off in llama.cpp
    gguf=GgufSpec(
        arch="phi3",
        names=GGUF_PHI3,
        options=frozenset({"rotary_dim"}),
        ignored=frozenset({"sliding_window", "layer_types"}),
        rope_kinds=("none", "linear", "longrope"),
        square_attention=True,
    ),
)
