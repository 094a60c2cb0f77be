"""The fused decoder graph: onnxruntime's contrib operators, written from the weights.

The traced graph (onnx_graph.py) spells attention, rotary and norms out in ~80 small nodes a
layer, and onnxruntime's per-node overhead then dominates a decode step of a small model. This
graph is what onnxruntime-genai's model builder writes: per layer SkipSimplifiedLayerNormalization
(RMSNorm with the residual add), one packed q/k/v MatMul, GroupQueryAttention (rotary from cos/sin
tables, q/k norms, the KV cache as past/present, the sliding window, the soft-cap), the o_proj
MatMul, the gated MLP (two MatMuls, QuickGelu/FastGelu/Gelu, Mul, MatMul): about 10 nodes a layer.

The inputs and outputs are the traced graph's (Optimum's names), with one difference:
GroupQueryAttention reads each row's length from attention_mask (seqlens_k = its sum - 1), so
a batch is RIGHT-padded: row b's real past keys come first, its padding after them, and its new
tokens sit at cache indices (and rotary positions) sum(mask[b]) - T .. sum(mask[b]) - 1.
position_ids must be those indices (GroupQueryAttention rotates by them). onnx_config.json says
"padding_side": "right" for this graph and "left" for the traced one.

Only the options of supports() are written this way; every other model takes the traced graph.
A tied LM head reads the embedding table through a Transpose node, so the table is stored once.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from pocketlm.interop import onnx_graph
from pocketlm.model.config import ModelConfig
from pocketlm.model.rope_freqs import attention_factor, layer_rope_set, rope_inv_freqs
from pocketlm.model.transformer import CausalLM

MS = "com.microsoft"
# the activation -> (contrib op, its attributes) of the gated MLP
_ACTIVATION_OPS = {
    "silu": ("QuickGelu", {"alpha": 1.0}),  # x * sigmoid(1.0 * x)
    "gelu_tanh": ("FastGelu", {}),
    "gelu": ("Gelu", {}),
}


def supports(config: ModelConfig) -> Sequence[str]:
    """The options the fused graph does not write (empty: it writes the model)."""
    c = config
    checks = {
        "a classifier or encoder": not c.has_lm_head or not c.causal,
        "norm_kind other than rms": c.norm_kind != "rms",
        "an MLP other than gated": c.mlp_kind != "gated",
        f"activation {c.activation}": c.activation not in _ACTIVATION_OPS,
        "a parallel block": c.parallel_block,
        "post-norm blocks": c.norm_position != "pre",
        "positions other than rope": c.position_kind != "rope",
        "experts": bool(c.n_experts),
        "longrope": c.rope_scaling == "longrope",
        # GroupQueryAttention's rotary reads cos/sin tables a multiple of 8 wide
        "a rotary width not a multiple of 16": c.resolved_rotary_dim % 16 != 0,
        "encoder embeddings": bool(
            c.type_vocab_size or c.embed_norm or c.embed_dim or c.embed_trigram
        ),
        "shared layers": c.shared_layers,
        "bottleneck layers": bool(c.bottleneck_dim),
    }
    return [name for name, hit in checks.items() if hit]


class _Graph:
    """Nodes and initializers collected as the builder walks the model."""

    def __init__(self) -> None:
        self.nodes: list = []
        self.initializers: list = []
        self._count = 0

    def name(self, stem: str) -> str:
        self._count += 1
        return f"{stem}_{self._count}"

    def const(self, name: str, array: np.ndarray) -> str:
        from onnx import numpy_helper

        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, domain: str = "", **attrs):
        """Add one node; its output name, or names when n_out > 1."""
        from onnx import helper

        outs = [self.name(op_type) for _ in range(n_out)]
        self.nodes.append(
            helper.make_node(op_type, inputs, outs, name=self.name(op_type), domain=domain, **attrs)
        )
        return outs[0] if n_out == 1 else outs


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().numpy()


def _norm_weight(config: ModelConfig, norm: torch.nn.Module) -> np.ndarray:
    """RMSNorm's multiplier: w, or Gemma's (offset + w), added in fp32 as the model does."""
    return _np(norm.weight) + np.float32(config.norm_offset)


def _linear(g: _Graph, x: str, linear: torch.nn.Linear, prefix: str) -> str:
    """x @ W^T (+ b): MatMul against the stored transpose (in, out)."""
    out = g.op("MatMul", [x, g.const(f"{prefix}.weight", _np(linear.weight).T)])
    if linear.bias is not None:
        out = g.op("Add", [out, g.const(f"{prefix}.bias", _np(linear.bias))])
    return out


def _head_norm(g: _Graph, x: str, weight: np.ndarray, prefix: str, c: ModelConfig) -> str:
    """RMSNorm over each head of x (B, T, heads * hd) -> (B, T, heads * hd)."""
    heads = g.op("Reshape", [x, g.const(f"{prefix}.heads", np.array([0, 0, -1, c.resolved_head_dim]))])  # fmt: skip
    normed = g.op("SimplifiedLayerNormalization", [heads, g.const(f"{prefix}.weight", weight)],
                  epsilon=c.norm_eps, axis=-1)  # fmt: skip
    return g.op("Reshape", [normed, g.const(f"{prefix}.flat", np.array([0, 0, -1]))])  # (B, T, n)


def build_fused(model: CausalLM, *, share_tied: bool = True):
    """The ModelProto of the fused decoder graph for a model supports() accepts.

    share_tied: a tied LM head reads the embedding table through a Transpose (stored once);
    False stores the head's own transposed copy (int8: so MatMulNBits quantizes it)."""
    from onnx import TensorProto, helper

    config = model.config
    refused = supports(config)
    if refused:
        raise ValueError(f"the fused graph does not write {', '.join(refused)}")
    c, g = config, _Graph()
    inputs, outputs, _ = onnx_graph.decoder_signature(c)
    hd, kv = c.resolved_head_dim, c.n_kv_heads
    decoder = model.model
    # per-row lengths for GroupQueryAttention: seqlens_k = sum(mask) - 1, total = mask's width
    lengths = g.op("ReduceSum", ["attention_mask", g.const("axis_1", np.array([1]))], keepdims=0)
    seqlens = g.op("Cast", [g.op("Sub", [lengths, g.const("one", np.array(1))])], to=TensorProto.INT32)  # fmt: skip
    width = g.op("Gather", [g.op("Shape", ["attention_mask"]), g.const("index_1", np.array(1))])
    total = g.op("Cast", [width], to=TensorProto.INT32)
    positions = np.arange(c.max_seq_len, dtype=np.float32)[:, None]  # (P, 1)
    rope_tables = {}
    for rope_set, inv_freq in rope_inv_freqs(c).items():  # (P, rotary_dim / 2) each
        angles = positions * inv_freq[None]
        scale = np.float32(attention_factor(c))
        rope_tables[rope_set] = (
            g.const(f"cos_{rope_set}", np.cos(angles) * scale),
            g.const(f"sin_{rope_set}", np.sin(angles) * scale),
        )

    embed_table = g.const("model.embed_tokens.weight", _np(decoder.embed_tokens.weight))
    h = g.op("Gather", [embed_table, "input_ids"])  # (B, T, dim)
    if c.embed_scale != 1.0:
        h = g.op("Mul", [h, g.const("embed_scale", np.array(c.embed_scale, np.float32))])
    residual, branch = h, None
    act_op, act_attrs = _ACTIVATION_OPS[c.activation]

    def add_norm(branch: str | None, residual: str, weight: np.ndarray, name: str):
        """(norm(branch + residual), branch + residual); the first layer has no branch yet."""
        w = g.const(name, weight)
        if branch is None:
            return g.op("SimplifiedLayerNormalization", [residual, w], epsilon=c.norm_eps, axis=-1), residual  # fmt: skip
        outs = g.op("SkipSimplifiedLayerNormalization", [branch, residual, w], n_out=4, domain=MS, epsilon=c.norm_eps)  # fmt: skip
        return outs[0], outs[3]

    for i, layer in enumerate(decoder.layers):
        p = f"model.layers.{i}"
        attn = layer.self_attn
        normed, residual = add_norm(branch, residual, _norm_weight(c, layer.input_layernorm), f"{p}.input_layernorm.weight")  # fmt: skip
        # one MatMul for q, k and v: (B, T, q_dim + 2 kv_dim)
        qkv_w = np.concatenate([_np(m.weight) for m in (attn.q_proj, attn.k_proj, attn.v_proj)]).T  # fmt: skip
        qkv = g.op("MatMul", [normed, g.const(f"{p}.self_attn.qkv_proj.weight", qkv_w)])
        if attn.q_proj.bias is not None:
            qkv_b = np.concatenate([_np(m.bias) for m in (attn.q_proj, attn.k_proj, attn.v_proj)])
            qkv = g.op("Add", [qkv, g.const(f"{p}.self_attn.qkv_proj.bias", qkv_b)])
        query, key, value = qkv, "", ""
        if c.qk_norm:  # onnxruntime's CPU GroupQueryAttention has no q/k norm inputs: RMSNorm here
            sizes = g.const(f"{p}.qkv_sizes", np.array([c.q_dim, c.kv_dim, c.kv_dim]))
            query, key, value = g.op("Split", [qkv, sizes], n_out=3, axis=-1)
            query = _head_norm(g, query, _norm_weight(c, attn.q_norm), f"{p}.self_attn.q_norm", c)
            key = _head_norm(g, key, _norm_weight(c, attn.k_norm), f"{p}.self_attn.k_norm", c)
        cos, sin = rope_tables[layer_rope_set(c, i)]
        gqa_inputs = [query, key, value, f"past_key_values.{i}.key", f"past_key_values.{i}.value",
                      seqlens, total, cos, sin, "position_ids"]  # fmt: skip
        attrs = dict(num_heads=c.n_heads, kv_num_heads=kv, do_rotary=1, rotary_interleaved=0,
                     scale=float(c.attn_scale or hd**-0.5), softcap=float(c.attn_softcap))  # fmt: skip
        if attn.window:  # the query at p sees keys p - window < j <= p (parity-tested)
            attrs["local_window_size"] = attn.window
        out = g.name("attn")
        g.nodes.append(
            helper.make_node(
                "GroupQueryAttention",
                gqa_inputs,
                [out, f"present.{i}.key", f"present.{i}.value"],
                name=g.name("GroupQueryAttention"),
                domain=MS,
                **attrs,
            )
        )
        a = _linear(g, out, attn.o_proj, f"{p}.self_attn.o_proj")
        if c.sandwich_norms:
            w = g.const(f"{p}.attn_output_norm.weight", _norm_weight(c, layer.attn_output_norm))
            a = g.op("SimplifiedLayerNormalization", [a, w], epsilon=c.norm_eps, axis=-1)
        normed, residual = add_norm(a, residual, _norm_weight(c, layer.post_attention_layernorm), f"{p}.post_attention_layernorm.weight")  # fmt: skip
        mlp = layer.mlp
        gate = _linear(g, normed, mlp.gate_proj, f"{p}.mlp.gate_proj")
        up = _linear(g, normed, mlp.up_proj, f"{p}.mlp.up_proj")
        hidden = g.op("Mul", [g.op(act_op, [gate], domain=MS, **act_attrs), up])
        branch = _linear(g, hidden, mlp.down_proj, f"{p}.mlp.down_proj")
        if c.sandwich_norms:
            w = g.const(f"{p}.ffn_output_norm.weight", _norm_weight(c, layer.ffn_output_norm))
            branch = g.op("SimplifiedLayerNormalization", [branch, w], epsilon=c.norm_eps, axis=-1)
    final, _ = add_norm(branch, residual, _norm_weight(c, decoder.norm), "model.norm.weight")
    head = model.lm_head
    tied = head.weight is decoder.embed_tokens.weight
    if tied and share_tied:  # the table stored once; onnxruntime folds the Transpose at load
        head_w = g.op("Transpose", [embed_table], perm=[1, 0])
    else:
        head_w = g.const("lm_head.weight", _np(head.weight).T)
    logits = g.op("MatMul", [final, head_w])
    if head.bias is not None:
        logits = g.op("Add", [logits, g.const("lm_head.bias", _np(head.bias))])
    if c.final_softcap:
        cap = g.const("final_softcap", np.array(c.final_softcap, np.float32))
        logits = g.op("Mul", [g.op("Tanh", [g.op("Div", [logits, cap])]), cap])
    g.nodes.append(helper.make_node("Identity", [logits], ["logits"], name="logits"))
    return _model(g, c, inputs, outputs)


def _model(g: _Graph, c: ModelConfig, inputs: list[str], outputs: list[str]):
    """The ModelProto: Optimum's inputs and outputs with their dynamic axes."""
    from onnx import TensorProto, helper

    cache = [onnx_graph.BATCH, c.n_kv_heads, None, c.resolved_head_dim]
    seq = [onnx_graph.BATCH, onnx_graph.SEQUENCE]
    graph_inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, seq),
        helper.make_tensor_value_info(
            "attention_mask", TensorProto.INT64, [onnx_graph.BATCH, onnx_graph.TOTAL]
        ),
        helper.make_tensor_value_info("position_ids", TensorProto.INT64, seq),
    ]
    for name in inputs[3:]:
        shape = [*cache[:2], onnx_graph.PAST, cache[3]]
        graph_inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))
    graph_outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [*seq, c.vocab_size])]  # fmt: skip
    for name in outputs[1:]:
        shape = [*cache[:2], onnx_graph.TOTAL, cache[3]]
        graph_outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))
    graph = helper.make_graph(g.nodes, "pocketlm-decoder", graph_inputs, graph_outputs, g.initializers)  # fmt: skip
    opsets = [helper.make_opsetid("", onnx_graph.OPSET), helper.make_opsetid(MS, 1)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="pocketlm")
    model.ir_version = 8
    return model
