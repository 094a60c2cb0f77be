"""The graphs `export onnx` traces: a decoder with its KV cache as inputs and outputs, and a
classifier; their input/output names and dynamic axes, as Hugging Face Optimum and
onnxruntime-genai name them.

Decoder: input_ids (B, T) int64, attention_mask (B, P + T) int64 (1 on real tokens),
position_ids (B, T) int64, past_key_values.{i}.key / .value (B, n_kv_heads, P, head_dim) float32
-> logits (B, T, vocab) float32, present.{i}.key / .value (B, n_kv_heads, P + T, head_dim). P may
be 0 (the first call). Classifier: input_ids (B, T), attention_mask (B, T) -> logits (B, n_labels).
Both run the one model (model/transformer.py) with plain torch attention (SDPA or its soft-capped
maths: set_attention_kernel "sdpa"), never PocketLM's native kernels, which ONNX cannot hold.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pocketlm.model.config import ModelConfig
from pocketlm.model.past_kv import PastKV
from pocketlm.model.transformer import CausalLM, set_attention_kernel

INPUT_IDS, ATTENTION_MASK, POSITION_IDS, LOGITS = (
    "input_ids",
    "attention_mask",
    "position_ids",
    "logits",
)
TOKEN_TYPE_IDS = "token_type_ids"  # a classifier's, when its model has token-type embeddings
OPSET = 17  # LayerNormalization (Phi-2) needs 17; onnxruntime >= 1.14 runs it
BATCH, SEQUENCE, PAST, TOTAL = (
    "batch_size",
    "sequence_length",
    "past_sequence_length",
    "total_sequence_length",
)


def past_names(n_layers: int) -> list[str]:
    """past_key_values.{i}.key, past_key_values.{i}.value for every layer, in input order."""
    return [f"past_key_values.{i}.{kv}" for i in range(n_layers) for kv in ("key", "value")]


def present_names(n_layers: int) -> list[str]:
    """present.{i}.key, present.{i}.value for every layer, in output order."""
    return [f"present.{i}.{kv}" for i in range(n_layers) for kv in ("key", "value")]


class DecoderGraph(nn.Module):
    """CausalLM over a functional cache: (ids, mask, positions, *past) -> (logits, *presents)."""

    def __init__(self, model: CausalLM) -> None:
        super().__init__()
        set_attention_kernel(model, "sdpa")  # plain torch ops only, whatever the machine
        self.model = model.eval()
        self.n_layers = model.config.n_layers

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        *past: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        pairs = [(past[2 * i], past[2 * i + 1]) for i in range(self.n_layers)]
        cache = PastKV(pairs, attention_mask.bool())
        logits = self.model(input_ids, cache, positions=position_ids)  # (B, T, V)
        return (logits.float(), *[t for pair in cache.presents for t in pair])


class ClassifierGraph(nn.Module):
    """A classifier: (input_ids, attention_mask[, token_type_ids]) -> logits (B, n_labels)."""

    def __init__(self, model: CausalLM) -> None:
        super().__init__()
        set_attention_kernel(model, "sdpa")
        self.model = model.eval()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        logits = self.model(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return logits.float()


def decoder_signature(config: ModelConfig) -> tuple[list[str], list[str], dict]:
    """(input names, output names, dynamic axes) of the decoder graph."""
    past, present = past_names(config.n_layers), present_names(config.n_layers)
    axes: dict[str, dict[int, str]] = {
        INPUT_IDS: {0: BATCH, 1: SEQUENCE},
        ATTENTION_MASK: {0: BATCH, 1: TOTAL},
        POSITION_IDS: {0: BATCH, 1: SEQUENCE},
        LOGITS: {0: BATCH, 1: SEQUENCE},
    }
    axes.update({name: {0: BATCH, 2: PAST} for name in past})
    axes.update({name: {0: BATCH, 2: TOTAL} for name in present})
    return [INPUT_IDS, ATTENTION_MASK, POSITION_IDS, *past], [LOGITS, *present], axes


def classifier_signature(config: ModelConfig) -> tuple[list[str], list[str], dict]:
    """(input names, output names, dynamic axes) of the classifier graph: token_type_ids too
    when the model has token-type embeddings."""
    inputs = [INPUT_IDS, ATTENTION_MASK] + ([TOKEN_TYPE_IDS] if config.type_vocab_size else [])
    axes: dict[str, dict[int, str]] = {name: {0: BATCH, 1: SEQUENCE} for name in inputs}
    return inputs, [LOGITS], {**axes, LOGITS: {0: BATCH}}


def decoder_example(config: ModelConfig, batch: int = 2, seq: int = 3, past: int = 4) -> tuple:
    """Example inputs to trace the decoder with: a non-empty past (so no axis is traced at a
    size of 0 or 1 and folded into a constant) and distinct batch/sequence/past sizes."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, config.vocab_size, (batch, seq), generator=generator)
    mask = torch.ones(batch, past + seq, dtype=torch.int64)
    positions = torch.arange(past, past + seq)[None].expand(batch, seq).contiguous()
    shape = (batch, config.n_kv_heads, past, config.resolved_head_dim)
    caches = [torch.randn(shape, generator=generator) for _ in range(2 * config.n_layers)]
    return (ids, mask, positions, *caches)


def classifier_example(config: ModelConfig, batch: int = 2, seq: int = 5) -> tuple:
    """Example inputs to trace a classifier with: one row left-padded, so the mask is data."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, config.vocab_size, (batch, seq), generator=generator)
    mask = torch.ones(batch, seq, dtype=torch.int64)
    mask[0, :2] = 0
    if not config.type_vocab_size:
        return ids, mask
    types = torch.randint(0, config.type_vocab_size, (batch, seq), generator=generator)
    return ids, mask, types


def unsupported(config: ModelConfig) -> Sequence[str]:
    """The model options these graphs do not export (empty: exportable), each with its reason."""
    reasons = []
    if config.n_experts:
        reasons.append("a mixture of experts (n_experts): only dense models export")
    if config.rope_scaling == "longrope":
        reasons.append(
            "longrope rotary scaling (its factors switch with the sequence's length at run time)"
        )
    if not config.causal and not config.labels:
        reasons.append("an encoder without a classification head (nothing to export it for)")
    return reasons


def cummax_symbolic(g, x, dim):
    """ONNX for torch.cummax(x, dim).values (opset 17 has no CumMax): the maximum over the
    (..., T, T) lower triangle, for the int64 (B, T) indices of model/attention.document_starts
    (a classifier's padding). The indices output is an ArgMax stand-in nobody reads."""
    from torch.onnx.symbolic_helper import _get_const

    axis = _get_const(dim, "i", "dim")
    if axis not in (1, -1):
        raise ValueError(f"cummax over dim {axis}: the export handles (B, T) rows only")
    zero, one = g.op("Constant", value_t=torch.tensor(0)), g.op("Constant", value_t=torch.tensor(1))
    length = g.op("Gather", g.op("Shape", x), one, axis_i=0)  # T
    index = g.op("Range", zero, length, one)  # (T,)
    keys = g.op("Unsqueeze", index, g.op("Constant", value_t=torch.tensor([0])))  # (1, T)
    queries = g.op("Unsqueeze", index, g.op("Constant", value_t=torch.tensor([1])))  # (T, 1)
    below = g.op("LessOrEqual", keys, queries)  # (T, T): key j at or before query t
    rows = g.op("Unsqueeze", x, g.op("Constant", value_t=torch.tensor([1])))  # (B, 1, T)
    lowest = g.op("Constant", value_t=torch.tensor(torch.iinfo(torch.int64).min))
    masked = g.op("Where", below, rows, lowest)  # (B, T, T)
    values = g.op("ReduceMax", masked, axes_i=[-1], keepdims_i=0)  # (B, T)
    return values, g.op("ArgMax", masked, axis_i=-1, keepdims_i=0)
