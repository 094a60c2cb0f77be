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
    c, g = model.config, _Graph()
    refused = supports(c)
    if refused:
        raise ValueError(f"the fused graph does not write {', '.join(refused)}")
    decoder = model.model
    lengths, tables = _lengths(g), _rope_tables(g, c)
    embed_table = g.const("model.embed_tokens.weight", _np(decoder.embed_tokens.weight))
    residual = g.op("Gather", [embed_table, "input_ids"])  # (B, T, dim)
    if c.embed_scale != 1.0:
        scale = g.const("embed_scale", np.array(c.embed_scale, np.float32))
        residual = g.op("Mul", [residual, scale])
    branch = None
    for i, layer in enumerate(decoder.layers):
        p = f"model.layers.{i}"
        normed, residual = _add_norm(g, c, branch, residual, layer.input_layernorm, f"{p}.input_layernorm")  # fmt: skip
        attn = _attention(g, c, layer.self_attn, i, normed, lengths, tables)
        if c.sandwich_norms:
            attn = _norm(g, c, attn, layer.attn_output_norm, f"{p}.attn_output_norm")
        normed, residual = _add_norm(g, c, attn, residual, layer.post_attention_layernorm, f"{p}.post_attention_layernorm")  # fmt: skip
        branch = _mlp(g, c, layer.mlp, normed, f"{p}.mlp")
        if c.sandwich_norms:
            branch = _norm(g, c, branch, layer.ffn_output_norm, f"{p}.ffn_output_norm")
    final, _ = _add_norm(g, c, branch, residual, decoder.norm, "model.norm")
    _head(g, c, model, final, embed_table, share_tied)
    inputs, outputs, _ = onnx_graph.decoder_signature(c)
    return _model(g, c, inputs, outputs)


def _lengths(g: _Graph) -> tuple[str, str]:
    """GroupQueryAttention's seqlens_k (B,) int32 = sum(mask) - 1 and its total_sequence_length,
    a scalar int32 = the mask's width."""
    from onnx import TensorProto

    sums = g.op("ReduceSum", ["attention_mask", g.const("axis_1", np.array([1]))], keepdims=0)
    seqlens = g.op("Sub", [sums, g.const("one", np.array(1))])
    width = g.op("Gather", [g.op("Shape", ["attention_mask"]), g.const("index_1", np.array(1))])
    return g.op("Cast", [seqlens], to=TensorProto.INT32), g.op("Cast", [width], to=TensorProto.INT32)  # fmt: skip


def _rope_tables(g: _Graph, c: ModelConfig) -> dict[str, tuple[str, str]]:
    """rope set -> (cos, sin) tables (max_seq_len, rotary_dim / 2) at positions 0.., float32
    angles float32(p) * inv_freq as the model computes them."""
    positions = np.arange(c.max_seq_len, dtype=np.float32)[:, None]  # (P, 1)
    scale = np.float32(attention_factor(c))
    tables = {}
    for rope_set, inv_freq in rope_inv_freqs(c).items():
        angles = positions * inv_freq[None]  # (P, rotary_dim / 2)
        tables[rope_set] = (
            g.const(f"cos_{rope_set}", np.cos(angles) * scale),
            g.const(f"sin_{rope_set}", np.sin(angles) * scale),
        )
    return tables


def _norm(g: _Graph, c: ModelConfig, x: str, norm: torch.nn.Module, name: str) -> str:
    """RMSNorm of x over its last axis."""
    w = g.const(f"{name}.weight", _norm_weight(c, norm))
    return g.op("SimplifiedLayerNormalization", [x, w], epsilon=c.norm_eps, axis=-1)


def _add_norm(
    g: _Graph, c: ModelConfig, branch: str | None, residual: str, norm: torch.nn.Module, name: str
) -> tuple[str, str]:
    """(norm(branch + residual), branch + residual) in one node; the first layer has no branch."""
    if branch is None:
        return _norm(g, c, residual, norm, name), residual
    w = g.const(f"{name}.weight", _norm_weight(c, norm))
    outs = g.op("SkipSimplifiedLayerNormalization", [branch, residual, w], n_out=4, domain=MS,
                epsilon=c.norm_eps)  # fmt: skip
    return outs[0], outs[3]


def _attention(
    g: _Graph,
    c: ModelConfig,
    attn: torch.nn.Module,
    i: int,
    x: str,
    lengths: tuple[str, str],
    tables: dict[str, tuple[str, str]],
) -> str:
    """Layer i's attention of x (B, T, dim) -> (B, T, dim), its cache as past/present i."""
    from onnx import helper

    p = f"model.layers.{i}.self_attn"
    projections = (attn.q_proj, attn.k_proj, attn.v_proj)
    qkv_w = np.concatenate([_np(m.weight) for m in projections]).T  # (dim, q_dim + 2 kv_dim)
    qkv = g.op("MatMul", [x, g.const(f"{p}.qkv_proj.weight", qkv_w)])
    if attn.q_proj.bias is not None:
        qkv_b = np.concatenate([_np(m.bias) for m in projections])
        qkv = g.op("Add", [qkv, g.const(f"{p}.qkv_proj.bias", qkv_b)])
    query, key, value = qkv, "", ""
    if c.qk_norm:  # onnxruntime's CPU GroupQueryAttention has no q/k norm inputs: RMSNorm here
        sizes = g.const(f"{p}.qkv_sizes", np.array([c.q_dim, c.kv_dim, c.kv_dim]))
        query, key, value = g.op("Split", [qkv, sizes], n_out=3, axis=-1)
        query = _head_norm(g, query, _norm_weight(c, attn.q_norm), f"{p}.q_norm", c)
        key = _head_norm(g, key, _norm_weight(c, attn.k_norm), f"{p}.k_norm", c)
    cos, sin = tables[layer_rope_set(c, i)]
    inputs = [query, key, value, f"past_key_values.{i}.key", f"past_key_values.{i}.value",
              *lengths, cos, sin, "position_ids"]  # fmt: skip
    attrs = dict(num_heads=c.n_heads, kv_num_heads=c.n_kv_heads, do_rotary=1,
                 rotary_interleaved=0, scale=float(c.attn_scale or c.resolved_head_dim**-0.5),
                 softcap=float(c.attn_softcap))  # fmt: skip
    if attn.window:  # the query at p sees keys p - window < j <= p (parity-tested)
        attrs["local_window_size"] = attn.window
    out = g.name("attn")
    g.nodes.append(
        helper.make_node(
            "GroupQueryAttention",
            inputs,
            [out, f"present.{i}.key", f"present.{i}.value"],
            name=g.name("GroupQueryAttention"),
            domain=MS,
            **attrs,
        )
    )
    return _linear(g, out, attn.o_proj, f"{p}.o_proj")


def _mlp(g: _Graph, c: ModelConfig, mlp: torch.nn.Module, x: str, p: str) -> str:
    """down(act(gate(x)) * up(x)) of x (B, T, dim)."""
    act_op, act_attrs = _ACTIVATION_OPS[c.activation]
    gate = _linear(g, x, mlp.gate_proj, f"{p}.gate_proj")
    up = _linear(g, x, mlp.up_proj, f"{p}.up_proj")
    hidden = g.op("Mul", [g.op(act_op, [gate], domain=MS, **act_attrs), up])
    return _linear(g, hidden, mlp.down_proj, f"{p}.down_proj")


def _head(
    g: _Graph, c: ModelConfig, model: CausalLM, x: str, embed_table: str, share_tied: bool
) -> None:
    """The graph's "logits" output: x @ the head's weight^T (+ bias), soft-capped (Gemma 2)."""
    from onnx import helper

    head = model.lm_head
    if head.weight is model.model.embed_tokens.weight and share_tied:
        weight = g.op("Transpose", [embed_table], perm=[1, 0])  # folded by onnxruntime at load
    else:
        weight = g.const("lm_head.weight", _np(head.weight).T)
    logits = g.op("MatMul", [x, weight])
    if head.bias is not None:
        logits = g.op("Add", [logits, g.const("lm_head.bias", _np(head.bias))])
    if c.final_softcap:
        cap = g.const("final_softcap", np.array(c.final_softcap, np.float32))
        logits = g.op("Mul", [g.op("Tanh", [g.op("Div", [logits, cap])]), cap])
    g.nodes.append(helper.make_node("Identity", [logits], ["logits"], name="logits"))


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
