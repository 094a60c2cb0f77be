"""Mixtral, Qwen2-MoE and Qwen3-MoE (sparse mixtures of experts), as data.

Expert tensors on disk (checked with transformers 5.24 save_pretrained and safe_open): released
checkpoints and what save_pretrained writes keep one tensor per expert matrix — Mixtral's
`block_sparse_moe.experts.{e}.w1/w3/w2` (gate, up, down) and `block_sparse_moe.gate` (router),
Qwen's `mlp.experts.{e}.gate_proj/up_proj/down_proj` and `mlp.gate` (PocketLM's own names). A file
written from a transformers 5 model's state_dict directly holds `mlp.experts.gate_up_proj`
[n_experts, 2 * ffn, dim] (each expert's gate rows, then its up rows) and `mlp.experts.down_proj`
[n_experts, dim, ffn], and `mlp.gate` for Mixtral too: import reads both (NameTable
alternatives / fused_experts); export writes the per-expert names, which transformers 4.x and 5.x
both load (5.x fuses them itself).
"""

from __future__ import annotations

from pocketlm.interop.families.llama import GGUF_LLAMA
from pocketlm.interop.families.names import GGUF, LLAMA_HF
from pocketlm.interop.families.spec import FamilySpec, GgufSpec, NameTable

_EXPERT_MATRICES = ("gate_proj", "up_proj", "down_proj")
_FUSED_EXPERTS = {
    "mlp.experts.gate_up_proj": ("gate_proj", "up_proj"),
    "mlp.experts.down_proj": ("down_proj",),
}
_QWEN_MOE_NAMES = NameTable(
    LLAMA_HF.top,
    {
        **LLAMA_HF.layer,
        "mlp.gate": "mlp.gate",
        "mlp.shared_expert_gate": "mlp.shared_expert_gate",
        **{f"mlp.experts.{{e}}.{m}": f"mlp.experts.{{e}}.{m}" for m in _EXPERT_MATRICES},
        **{f"mlp.shared_expert.{m}": f"mlp.shared_expert.{m}" for m in _EXPERT_MATRICES},
    },
    fused_experts=_FUSED_EXPERTS,
)
_QWEN_DEFAULTS = {
    "head_dim": None,
    "hidden_act": "silu",
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "use_sliding_window": False,
    "decoder_sparse_step": 1,
    "mlp_only_layers": None,
    "norm_topk_prob": False,
    "initializer_range": 0.02,
}

MIXTRAL = FamilySpec(
    name="mixtral",
    architectures=("MixtralForCausalLM",),
    model_types=("mixtral",),
    defaults={
        "num_key_value_heads": 8,
        "head_dim": None,
        "hidden_act": "silu",
        "max_position_embeddings": 4096 * 32,
        "rms_norm_eps": 1e-5,
        "rope_theta": 1_000_000.0,
        "tie_word_embeddings": False,
        "sliding_window": None,
        "num_local_experts": 8,
        "num_experts_per_tok": 2,
        "intermediate_size": 14336,
        "initializer_range": 0.02,
    },
    rope_types=("default",),
    windows="all",
    experts={
        "n_experts": ("num_local_experts", "num_experts"),
        "n_experts_per_token": ("num_experts_per_tok",),
        "expert_ffn_dim": ("intermediate_size",),
    },
    hf_names=NameTable(
        LLAMA_HF.top,
        {
            **LLAMA_HF.layer,
            "mlp.gate": "block_sparse_moe.gate",
            "mlp.experts.{e}.gate_proj": "block_sparse_moe.experts.{e}.w1",
            "mlp.experts.{e}.up_proj": "block_sparse_moe.experts.{e}.w3",
            "mlp.experts.{e}.down_proj": "block_sparse_moe.experts.{e}.w2",
        },
        alternatives={"block_sparse_moe.gate": "mlp.gate"},
        fused_experts=_FUSED_EXPERTS,
    ),
    gguf=GGUF_LLAMA,  # llama.cpp runs Mixtral as llama with experts
)

QWEN2_MOE = FamilySpec(
    name="qwen2_moe",
    architectures=("Qwen2MoeForCausalLM",),
    model_types=("qwen2_moe",),
    defaults={
        **_QWEN_DEFAULTS,
        "num_key_value_heads": 16,
        "qkv_bias": True,
        "num_experts": 60,
        "num_experts_per_tok": 4,
        "moe_intermediate_size": 1408,
        "shared_expert_intermediate_size": 5632,
    },
    rope_types=("default", "linear"),
    bias_flags={"qkv_bias": ("qkv_bias",)},
    refused={"use_sliding_window": (False, None)},
    experts={
        "n_experts": ("num_experts", "num_local_experts"),
        "n_experts_per_token": ("num_experts_per_tok",),
        "expert_ffn_dim": ("moe_intermediate_size",),
        "shared_expert_ffn_dim": ("shared_expert_intermediate_size",),
    },
    router_flag="norm_topk_prob",
    sparse_step_keys=True,
    hf_names=_QWEN_MOE_NAMES,
    # src/models/qwen2moe.cpp: top-k weights never renormalised, the sigmoid-gated shared expert
    # required, an output tensor always, attn_output [dim, dim]
    gguf=GgufSpec(
        arch="qwen2moe",
        names=GGUF,
        options=frozenset({"qkv_bias", "n_experts_per_token", "expert_ffn_dim"}),
        always=frozenset({"n_experts", "shared_expert_ffn_dim"}),
        fixed={"router": "softmax_topk_raw"},
        head="always",
        square_attention=True,
    ),
)

QWEN3_MOE = FamilySpec(
    name="qwen3_moe",
    architectures=("Qwen3MoeForCausalLM",),
    model_types=("qwen3_moe",),
    defaults={
        **_QWEN_DEFAULTS,
        "num_key_value_heads": 4,
        "attention_bias": False,
        "num_experts": 128,
        "num_experts_per_tok": 8,
        "moe_intermediate_size": 768,
    },
    fixed={"qk_norm": True},
    rope_types=("default", "linear"),
    bias_flags={"attention_bias": ("qkv_bias", "o_bias")},
    refused={"use_sliding_window": (False, None)},
    experts={
        "n_experts": ("num_experts", "num_local_experts"),
        "n_experts_per_token": ("num_experts_per_tok",),
        "expert_ffn_dim": ("moe_intermediate_size",),
    },
    router_flag="norm_topk_prob",
    sparse_step_keys=True,
    hf_names=_QWEN_MOE_NAMES,
    gguf=GgufSpec(  # src/models/qwen3moe.cpp: top-k weights always renormalised, q/k norms
        arch="qwen3moe",
        names=GGUF,
        options=frozenset({"qkv_bias", "n_experts_per_token", "expert_ffn_dim"}),
        always=frozenset({"n_experts", "qk_norm"}),
        fixed={"router": "softmax_topk"},
    ),
)
