"""The model as the C engine's Model takes it: a config dict (dims, runtime sizes, family
options), one dict per layer (norms, biases, router, matrices in weights_spec.layer_matrices'
order, window, rope set), the embedding and head, and the rotary inverse frequencies of
model/rope_freqs.py. Gemma's (1 + w) norm weights cross with the 1 already added (in float32, as
the torch model adds it). Arrays are the memory-mapped tensors themselves wherever possible.
"""

from __future__ import annotations

import numpy as np

from pocketlm.checkpoint.safetensors_mmap import MappedTensors
from pocketlm.checkpoint.weights_spec import biased_matrices, layer_matrices, layer_norms
from pocketlm.model.config import ModelConfig
from pocketlm.model.rope_freqs import (
    GLOBAL,
    LOCAL,
    LONG,
    attention_factor,
    layer_rope_set,
    long_factors_from,
    rope_inv_freqs,
)

F32, BF16, I8, I4 = 0, 1, 2, 3  # plm_dtype
# weights_spec's layer norm names -> the C layer's keys
_NORM_KEYS = {
    "input_layernorm": "input_norm",
    "post_attention_layernorm": "post_attention_norm",
    "self_attn.q_norm": "q_norm",
    "self_attn.k_norm": "k_norm",
    "attn_output_norm": "attn_output_norm",
    "ffn_output_norm": "ffn_output_norm",
}
_ACTIVATIONS = {"silu": 0, "gelu_tanh": 1, "gelu": 2}


def _matrix(t: MappedTensors, prefix: str, rows: int, cols: int, group: int) -> tuple:
    """(dtype, rows, cols, group, data, scales) for the C side, from `prefix`.weight or
    .qweight/.scales (names, shapes and dtypes already checked by check_weights)."""
    if f"{prefix}.weight" in t:
        w = t.get(f"{prefix}.weight")
        return (F32 if t.dtype(f"{prefix}.weight") == "F32" else BF16, rows, cols, 0, w, None)
    q, s = t.get(f"{prefix}.qweight"), t.get(f"{prefix}.scales")
    if t.dtype(f"{prefix}.qweight") == "I8":
        return (I8, rows, cols, 0, q, s)
    return (I4, rows, cols, group, q, s.view(np.uint16))


def _vector(t: MappedTensors, name: str) -> np.ndarray:
    """A float32 vector (norm weight or bias), widened from bf16 bits when stored so."""
    v = t.get(name)
    if t.dtype(name) == "BF16":  # raw uint16 bits: the high half of a float32
        return (v.astype(np.uint32) << 16).view(np.float32)
    return v


def _norm(t: MappedTensors, c: ModelConfig, name: str) -> tuple:
    """(weight, bias or None) of a norm; Gemma's (1 + w) arrives with the 1 added in float32
    (exactly what the torch model computes before it multiplies)."""
    w = _vector(t, name + ".weight")
    if c.norm_kind == "layer":
        return w, _vector(t, name + ".bias")
    if c.norm_offset:
        w = np.float32(c.norm_offset) + w.astype(np.float32)
    return w, None


def _layer(t: MappedTensors, c: ModelConfig, i: int, group: int) -> dict:
    """The C side's dict of one decoder layer: norms, biases, router, matrices, window, rope set."""
    p = f"model.layers.{i}."
    spec: dict = {}
    for name in layer_norms(c):
        key = _NORM_KEYS[name]
        spec[key], spec[key + "_bias"] = _norm(t, c, p + name)
    for name in biased_matrices(c):  # self_attn.q_proj -> q_bias, mlp.up_proj -> up_bias
        spec[name.rsplit(".", 1)[1].removesuffix("_proj") + "_bias"] = _vector(t, f"{p}{name}.bias")
    if c.n_experts:
        spec["router"] = _vector(t, p + "mlp.gate.weight")  # (n_experts, dim)
    if c.shared_expert_ffn_dim:
        spec["shared_expert_gate"] = _vector(t, p + "mlp.shared_expert_gate.weight")  # (1, dim)
    spec["matrices"] = tuple(
        _matrix(t, p + name, rows, cols, group) for name, rows, cols in layer_matrices(c)
    )
    spec["window"] = c.sliding_window if c.layer_kind(i) == "sliding" else 0
    spec["rope_set"] = 1 if layer_rope_set(c, i) == LOCAL else 0
    return spec


def c_weights(t: MappedTensors, c: ModelConfig, group: int) -> dict:
    """The weights as the C Model takes them: embed, lm_head, final_norm (+ final_norm_bias),
    lm_head_bias and one dict per layer (see _layer)."""
    embed = _matrix(t, "model.embed_tokens", c.vocab_size, c.dim, group)
    final_norm, final_bias = _norm(t, c, "model.norm")
    return {
        "embed": embed,
        "lm_head": embed if c.tie_embeddings else _matrix(t, "lm_head", c.vocab_size, c.dim, group),
        "final_norm": final_norm,
        "final_norm_bias": final_bias,
        "lm_head_bias": _vector(t, "lm_head.bias") if c.lm_head_bias else None,
        "layers": [_layer(t, c, i, group) for i in range(c.n_layers)],
    }


def c_config(c: ModelConfig, context: int, max_batch: int, slots: int, kv_rewind: int) -> dict:
    """The C Model's config dict: the dims, the runtime sizes and the family options."""
    return {
        "vocab": c.vocab_size,
        "dim": c.dim,
        "n_layers": c.n_layers,
        "n_heads": c.n_heads,
        "n_kv_heads": c.n_kv_heads,
        "head_dim": c.resolved_head_dim,
        "ffn_dim": c.resolved_ffn_dim,
        "max_seq": context,
        "max_batch": max_batch,
        "n_slots": slots,
        "norm_eps": c.norm_eps,
        "norm_kind": int(c.norm_kind == "layer"),
        "activation": _ACTIVATIONS[c.activation],
        "mlp_gated": int(c.mlp_kind == "gated"),
        "qk_norm": int(c.qk_norm),
        "parallel_block": int(c.parallel_block),
        "sandwich_norms": int(c.sandwich_norms),
        "rotary_dim": c.resolved_rotary_dim,
        "rope_long_after": long_factors_from(c),
        "rope_scale": attention_factor(c),
        "embed_scale": c.embed_scale,
        "attn_scale": c.attn_scale,
        "attn_softcap": c.attn_softcap,
        "final_softcap": c.final_softcap,
        "n_experts": c.n_experts,
        "top_k": c.n_experts_per_token,
        "expert_ffn_dim": c.expert_ffn_dim,
        "shared_ffn_dim": c.shared_expert_ffn_dim,
        "router_renormalise": int(c.router == "softmax_topk"),
        "kv_rewind": kv_rewind,
    }


def c_rope(c: ModelConfig) -> tuple:
    """(global, local or None, long or None) inverse frequencies, as the C Model takes them."""
    freqs = rope_inv_freqs(c)
    local = any(layer_rope_set(c, i) == LOCAL for i in range(c.n_layers))
    return freqs[GLOBAL], freqs[LOCAL] if local else None, freqs.get(LONG)
