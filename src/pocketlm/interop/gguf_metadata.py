"""What llama.cpp needs to know about a model besides its tensors: whether its architecture can run
the model at all, the `{arch}.*` hyperparameter keys, and the tensors it computes RoPE from.

Checked against llama.cpp as llama-cpp-python 0.3.36 vendors it (src/models/<arch>.cpp for what
each architecture computes, src/llama-model.cpp for the keys it reads). A model option the
architecture does not compute is refused with the option named (the GGUF would load and give
other answers); one llama.cpp knowingly leaves out (a sliding window where it has none) exports
with a note, which the manifest records and the log shows.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from pocketlm.common.errors import ArtifactError
from pocketlm.interop.families.spec import GgufSpec
from pocketlm.model.config import ModelConfig
from pocketlm.model.rope import attention_factor, default_inv_freq, rope_buffers

# Options every architecture takes: the norm offset is folded into the norm weights; the rope
# parameters go with rope_scaling (checked against GgufSpec.rope_kinds); the softmax scale is
# compared with the architecture's own.
_ANY_ARCH = {"norm_offset", "rope_scaling", "rope_factor", "rope_low_freq_factor",
             "rope_high_freq_factor", "rope_original_max_len", "rope_short_factor",
             "rope_long_factor", "attn_scale"}  # fmt: skip


def llama_cpp_notes(spec: GgufSpec, config: ModelConfig) -> list[str]:
    """Where llama.cpp will run the model differently, for the manifest and the log;
    ArtifactError naming every option its architecture cannot run."""
    c, base = config, ModelConfig()
    problems: list[str] = []
    notes: list[str] = []
    arch = f"llama.cpp's {spec.arch} architecture"
    for name in sorted({*c.family_features(), *spec.fixed, *spec.always}):
        value = getattr(c, name)
        if name in spec.fixed:
            want = spec.fixed[name]
            want = want(c) if callable(want) else want
            if not _same(value, want):
                problems.append(f"model.{name} = {value!r} ({arch} computes with {want!r})")
        elif name in spec.always:
            if not value:
                problems.append(f"model.{name} is off ({arch} always applies it)")
        elif name in spec.ignored:
            if name == "sliding_window":
                notes.append(
                    f"{arch} has no sliding window: it attends to the whole context, so it "
                    f"matches this model only on sequences of at most {value} tokens"
                )
        elif name not in spec.options and name not in _ANY_ARCH and value != getattr(base, name):
            problems.append(f"model.{name} = {value!r} ({arch} does not implement it)")
    if c.rope_scaling not in spec.rope_kinds:
        problems.append(
            f"rope scaling {c.rope_scaling!r} ({arch} takes {', '.join(spec.rope_kinds)})"
        )
    ours = c.attn_scale or c.resolved_head_dim**-0.5
    theirs = spec.query_scale(c) if spec.query_scale else c.resolved_head_dim**-0.5
    if not math.isclose(ours, theirs, rel_tol=1e-6):
        problems.append(
            f"softmax scale {ours:.6g} (model.attn_scale; {arch} scales queries by {theirs:.6g})"
        )
    if spec.head == "tied" and not c.tie_embeddings:
        problems.append(f"an untied lm_head ({arch} always uses token_embd as the head)")
    if spec.square_attention and c.q_dim != c.dim:
        problems.append(
            f"heads x head_dim = {c.q_dim} != dim = {c.dim} ({arch} needs attn_output [dim, dim])"
        )
    sliding = c.sliding_window and any(c.layer_kind(i) == "sliding" for i in range(c.n_layers))
    if spec.arch == "gemma3" and sliding and c.rope_scaling != "none" and not c.rope_local_theta:
        problems.append(f"scaled rope in sliding layers ({arch} never scales them)")
    if c.rope_scaling == "longrope":
        notes.append(
            f"{arch} chooses longrope's long factors by the context size it is given (n_ctx > "
            f"{c.rope_original_max_len}), PocketLM and transformers by the sequence's length"
        )
    if problems:
        raise ArtifactError(
            f"GGUF export: llama.cpp cannot run this model as {spec.arch}: {'; '.join(problems)}. "
            "Export it with `pocketlm export hf` instead"
        )
    return notes


def _same(value: Any, want: Any) -> bool:
    if isinstance(want, float) and isinstance(value, int | float):
        return math.isclose(value, want, rel_tol=1e-9)
    return value == want


def add_hyperparameters(writer: Any, spec: GgufSpec, config: ModelConfig) -> None:
    """The `{arch}.*` keys llama.cpp reads for this model (general.* and tokenizer.* aside)."""
    c, a = config, spec.arch
    writer.add_uint32(f"{a}.context_length", c.max_seq_len)
    writer.add_uint32(f"{a}.embedding_length", c.dim)
    writer.add_uint32(f"{a}.block_count", c.n_layers)
    ffn = c.expert_ffn_dim if c.n_experts and spec.expert_width_is_ffn else c.resolved_ffn_dim
    writer.add_uint32(f"{a}.feed_forward_length", ffn)
    writer.add_uint32(f"{a}.attention.head_count", c.n_heads)
    writer.add_uint32(f"{a}.attention.head_count_kv", c.n_kv_heads)
    writer.add_uint32(f"{a}.attention.key_length", c.resolved_head_dim)
    writer.add_uint32(f"{a}.attention.value_length", c.resolved_head_dim)
    if c.norm_kind == "layer":
        writer.add_float32(f"{a}.attention.layer_norm_epsilon", c.norm_eps)
    else:
        writer.add_float32(f"{a}.attention.layer_norm_rms_epsilon", c.norm_eps)
    writer.add_uint32(f"{a}.vocab_size", c.vocab_size)
    writer.add_uint32(f"{a}.rope.dimension_count", c.resolved_rotary_dim)
    writer.add_float32(f"{a}.rope.freq_base", c.rope_theta)
    if c.rope_scaling == "linear":
        writer.add_string(f"{a}.rope.scaling.type", "linear")
        writer.add_float32(f"{a}.rope.scaling.factor", c.rope_factor)
    elif c.rope_scaling == "longrope":
        writer.add_string(f"{a}.rope.scaling.type", "longrope")
        writer.add_float32(f"{a}.rope.scaling.attn_factor", attention_factor(c))
        writer.add_uint32(f"{a}.rope.scaling.original_context_length", c.rope_original_max_len)
    # (llama3 scaling travels as the rope_freqs tensor: rope_tensors)
    if "sliding_window" in spec.options:
        kinds = [c.layer_kind(i) == "sliding" for i in range(c.n_layers)]
        if c.sliding_window and any(kinds):
            writer.add_uint32(f"{a}.attention.sliding_window", c.sliding_window)
            writer.add_array(f"{a}.attention.sliding_window_pattern", kinds)
            writer.add_float32(f"{a}.rope.freq_base_swa", c.rope_local_theta or c.rope_theta)
        elif spec.arch == "gemma2":  # sliding layers unless the pattern says otherwise
            writer.add_array(f"{a}.attention.sliding_window_pattern", kinds)
    elif "sliding_window" in spec.ignored and c.sliding_window:
        writer.add_uint32(f"{a}.attention.sliding_window", c.sliding_window)  # for the record
    if c.attn_softcap:
        writer.add_float32(f"{a}.attn_logit_softcapping", c.attn_softcap)
    if c.final_softcap:
        writer.add_float32(f"{a}.final_logit_softcapping", c.final_softcap)
    if c.n_experts:
        writer.add_uint32(f"{a}.expert_count", c.n_experts)
        writer.add_uint32(f"{a}.expert_used_count", c.n_experts_per_token)
        writer.add_uint32(f"{a}.expert_feed_forward_length", c.expert_ffn_dim)
    if c.shared_expert_ffn_dim:
        writer.add_uint32(f"{a}.expert_shared_feed_forward_length", c.shared_expert_ffn_dim)


def rope_tensors(config: ModelConfig) -> dict[str, np.ndarray]:
    """The tensors llama.cpp computes RoPE frequencies from, float32 (rotary_dim / 2,): Llama 3's
    per-frequency divisors as rope_freqs, longrope's as rope_factors_long / _short."""
    c = config
    if c.rope_scaling == "llama3":
        base = default_inv_freq(c.resolved_rotary_dim, c.rope_theta).double()
        scaled = rope_buffers(c)["rope_inv_freq_global"].double()
        return {"rope_freqs.weight": (base / scaled).float().numpy()}
    if c.rope_scaling == "longrope":
        return {
            "rope_factors_long.weight": np.asarray(c.rope_long_factor, dtype=np.float32),
            "rope_factors_short.weight": np.asarray(c.rope_short_factor, dtype=np.float32),
        }
    return {}
