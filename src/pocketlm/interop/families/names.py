"""Tensor-name tables shared by several families (Llama's names, GGUF's llama.cpp names)."""

from __future__ import annotations

from pocketlm.interop.families.spec import NameTable

_LAYER_MODULES = (
    "input_layernorm",
    "post_attention_layernorm",
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "self_attn.q_norm",
    "self_attn.k_norm",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
)
_TOP = {
    "model.embed_tokens": "model.embed_tokens",
    "model.norm": "model.norm",
    "lm_head": "lm_head",
    "score": "score",  # a sequence classifier's head (transformers' *ForSequenceClassification)
}

# Llama's names, which PocketLM's own are: the identity, spelled out so every tensor is accounted for.
LLAMA_HF = NameTable(_TOP, {m: m for m in _LAYER_MODULES})

# Gemma 2 / 3: two more norms per layer, and HF's post_attention_layernorm is the attention
# output's norm, while PocketLM's post_attention_layernorm is always the norm before the MLP.
SANDWICH_HF = NameTable(
    _TOP,
    {
        **{m: m for m in _LAYER_MODULES},
        "attn_output_norm": "post_attention_layernorm",
        "post_attention_layernorm": "pre_feedforward_layernorm",
        "ffn_output_norm": "post_feedforward_layernorm",
    },
)

_GGUF_TOP = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}
_GGUF_LAYER = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "attn_output_norm": "post_attention_norm",
    "ffn_output_norm": "post_ffw_norm",
    # mixture of experts: the router, every expert stacked in one 3-D tensor, the shared expert
    "mlp.gate": "ffn_gate_inp",
    "mlp.experts.{e}.gate_proj": "ffn_gate_exps",
    "mlp.experts.{e}.up_proj": "ffn_up_exps",
    "mlp.experts.{e}.down_proj": "ffn_down_exps",
    "mlp.shared_expert.gate_proj": "ffn_gate_shexp",
    "mlp.shared_expert.up_proj": "ffn_up_shexp",
    "mlp.shared_expert.down_proj": "ffn_down_shexp",
    "mlp.shared_expert_gate": "ffn_gate_inp_shexp",
}
# llama.cpp's tensor names (gguf-py's TENSOR_NAMES), by PocketLM module. Gemma 2/3's norm before
# the MLP is ffn_norm too (FFN_PRE_NORM and FFN_NORM share the name).
GGUF = NameTable(_GGUF_TOP, _GGUF_LAYER, layer_prefix="blk.{i}.", what="GGUF")
# Phi-3 in llama.cpp (as its converter writes it): q/k/v in one attn_qkv, gate and up in one
# ffn_up (gate rows first: llama.cpp's fused SwiGLU gates with the first half).
GGUF_PHI3 = NameTable(
    _GGUF_TOP,
    _GGUF_LAYER,
    fused={
        "attn_qkv": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
        "ffn_up": ("mlp.gate_proj", "mlp.up_proj"),
    },
    layer_prefix="blk.{i}.",
    what="GGUF",
)
