"""What a model family is, as data: FamilySpec and the tensor-name tables it carries.

A spec says which Hugging Face configs it matches (architectures, model_type), what
`transformers` assumes for config keys a config.json leaves out, which ModelConfig options every
member has, how its config spells the rest (families/hf_config.py reads and writes them), and how
its tensors are named in Hugging Face checkpoints and in GGUF files, fused tensors included. Import,
HF export and GGUF export all read the same spec, so the three directions cannot drift.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pocketlm.checkpoint.weights_spec import expected_tensors
from pocketlm.common.errors import ArtifactError
from pocketlm.interop.families.encoder_spec import EncoderSpec
from pocketlm.model.config import ModelConfig

LAYER_PREFIX = "model.layers.{i}."  # PocketLM's (and most HF families') prefix of layer i


@dataclass(frozen=True)
class NameTable:
    """PocketLM module names -> another format's, for the whole model and inside each layer.

    Names are modules (no .weight/.bias: both suffixes carry over); `{e}` in a layer name stands
    for an expert's index. `fused` lists target modules that hold several PocketLM modules stacked
    along the rows, in order (Phi-3's qkv_proj); an expert template whose target has no `{e}`
    names one tensor holding every expert's matrix stacked, [n_experts, rows, cols] (GGUF's
    ffn_*_exps), planned with the experts' tensors in expert order. Two more tables serve import only, for other
    spellings a checkpoint may use: `alternatives` (target module -> another name for it) and
    `fused_experts` (a tensor holding every expert's matrices stacked, [n_experts, rows, cols]:
    target name inside a layer -> the expert modules each expert contributes, in row order).
    """

    top: Mapping[str, str]
    layer: Mapping[str, str]
    fused: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    layer_prefix: str = LAYER_PREFIX
    what: str = "Hugging Face"  # the format, for messages
    alternatives: Mapping[str, str] = field(default_factory=dict)
    fused_experts: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def plan(self, config: ModelConfig) -> list[tuple[str, tuple[str, ...]]]:
        """[(target tensor, the PocketLM tensors it holds, stacked on rows)] for every tensor a
        float model with this config stores, in PocketLM's order; ArtifactError for a tensor the
        table cannot name (an option the family does not have)."""
        fused_of = {ours: target for target, group in self.fused.items() for ours in group}
        out: list[tuple[str, tuple[str, ...]]] = []
        seen_fused: set[str] = set()
        for name in expected_tensors(config, {"scheme": "none"}):
            module, _, suffix = name.rpartition(".")
            layer, inner = _split_layer(module)
            if layer is None:
                target = self.top.get(module)
                group: tuple[str, ...] = (name,)
            elif inner in fused_of:
                fused = fused_of[inner]
                key = f"{layer}.{fused}.{suffix}"
                if key in seen_fused:
                    continue
                seen_fused.add(key)
                target = fused
                group = tuple(
                    f"{LAYER_PREFIX.format(i=layer)}{m}.{suffix}" for m in self.fused[fused]
                )
            else:
                expert = _EXPERT.match(inner)
                group = (name,)
                if expert:  # mlp.experts.{e}.gate_proj: look up the template, fill the index
                    template = self.layer.get(f"mlp.experts.{{e}}.{expert['module']}")
                    target = template.format(e=expert["e"]) if template else None
                    if template and "{e}" not in template:  # every expert in one tensor
                        key = f"{layer}.{template}.{suffix}"
                        if key in seen_fused:
                            continue
                        seen_fused.add(key)
                        group = tuple(
                            f"{LAYER_PREFIX.format(i=layer)}mlp.experts.{e}.{expert['module']}.{suffix}"
                            for e in range(config.n_experts)
                        )
                else:
                    target = self.layer.get(inner)
            if target is None:
                raise ArtifactError(f"no {self.what} name for tensor {name!r}")
            prefix = "" if layer is None else self.layer_prefix.format(i=layer)
            out.append((f"{prefix}{target}.{suffix}", group))
        return out


_EXPERT = re.compile(r"^mlp\.experts\.(?P<e>\d+)\.(?P<module>\w+)$")


def _split_layer(module: str) -> tuple[int | None, str]:
    """(layer index, name inside the layer) for model.layers.{i}.x, else (None, module)."""
    head = "model.layers."
    if not module.startswith(head):
        return None, module
    index, _, inner = module[len(head) :].partition(".")
    return int(index), inner


@dataclass(frozen=True)
class GgufSpec:
    """How llama.cpp runs a family: its architecture, tensor names and what the architecture's
    code computes (read from llama.cpp's src/models/<arch>.cpp; interop/gguf_metadata.py checks a
    model against it before writing anything).

    A ModelConfig option away from Llama's default must be listed: in `options` (the
    architecture reads it from the file, any value), `always` (it applies it unconditionally: the
    model must have it on), `fixed` (it hard-codes a value: the model must have exactly that; a
    callable computes it from the config) or `ignored` (llama.cpp does not implement it and runs
    the model without: exported with a note). Anything else is refused, naming the option.
    Options every architecture takes: the norm offset (folded into the weights, as llama.cpp's
    converter does for Gemma's (1 + w)) and rope scaling of a kind in `rope_kinds`; the softmax
    scale (attn_scale) must be the architecture's own (`query_scale`).
    """

    arch: str  # llama.cpp's architecture name (general.architecture)
    names: NameTable  # PocketLM module -> GGUF tensor (experts stacked when a name has no {e})
    options: frozenset[str] = frozenset()
    always: frozenset[str] = frozenset()
    fixed: Mapping[str, Any] = field(default_factory=dict)
    ignored: frozenset[str] = frozenset()
    rope_kinds: tuple[str, ...] = ("none", "linear")
    interleaved_rope: bool = False  # rope pairs (x0, x1), not halves: q/k rows are permuted
    head: str = "untied"  # output.weight written: "untied" (only when untied: else llama.cpp
    # reuses token_embd), "always" (the architecture requires it) or "tied" (it never reads one)
    square_attention: bool = False  # heads * head_dim must equal the width (attn_output [dim, dim])
    query_scale: Callable[[Any], float] | None = None  # its query scale, when not head_dim ** -0.5
    expert_width_is_ffn: bool = False  # experts are feed_forward_length wide (llama's Mixtral)


@dataclass(frozen=True)
class FamilySpec:
    """One model family: how to recognise its config, read it, write it and name its tensors."""

    name: str  # PocketLM's name for the family ("llama", "gemma2", ...)
    architectures: tuple[str, ...]  # config.json "architectures" it matches (the first is written)
    model_types: tuple[str, ...]  # config.json "model_type" values (the first is written)
    defaults: Mapping[str, Any]  # what transformers assumes for keys config.json leaves out
    fixed: Mapping[str, Any] = field(default_factory=dict)  # ModelConfig options every member has
    norm_eps_key: str = "rms_norm_eps"
    activation_key: str = "hidden_act"
    activations: Mapping[str, str] = field(
        default_factory=dict
    )  # HF name -> ours, beyond the shared ones
    rope_types: tuple[str, ...] = ("default",)  # rope_type values the family accepts
    rope_aliases: Mapping[str, str] = field(default_factory=dict)  # old rope_type spellings
    original_max_key: bool = False  # a top-level original_max_position_embeddings wins (Phi-3)
    bias_flags: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # HF flag -> options
    windows: str = "none"  # sliding layers: "none" | "all" | "qwen" | "layer_types"
    window_pattern: int = 0  # layer_types default: every n-th layer full, the rest sliding
    gemma: int = 0  # Gemma generation (1, 2, 3): embedding scale, query_pre_attn_scalar, caps
    qk_norm_flag: str = ""  # HF flag that turns on q/k norms (Phi's qk_layernorm)
    experts: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # MoE option <- HF keys
    router_flag: str = ""  # HF flag: renormalise the top-k weights (Qwen's norm_topk_prob)
    sparse_step_keys: bool = False  # Qwen-MoE's mlp_only_layers / decoder_sparse_step
    refused: Mapping[str, Any] = field(default_factory=dict)  # HF key -> only value implemented
    hf_names: NameTable = field(default_factory=lambda: NameTable({}, {}))
    gguf: GgufSpec | None = None  # None: llama.cpp has no architecture for the family
    encoder: EncoderSpec | None = None  # an encoder family (BERT, ...): its own config reading
    # transformers' sequence classifier of the family ("" = the first architecture with
    # ForCausalLM -> ForSequenceClassification): its body, plus a bias-free `score` layer over
    # the last non-pad token (families/classifier_config.py)
    classifier_arch: str = ""

    @property
    def classifier_architecture(self) -> str:
        """The family's *ForSequenceClassification architecture name."""
        return self.classifier_arch or self.architectures[0].replace(
            "ForCausalLM", "ForSequenceClassification"
        )

    def matches(self, hf: Mapping[str, Any]) -> bool:
        """Whether a config.json names this family (by architectures, its sequence classifier
        included, else by model_type)."""
        archs = hf.get("architectures") or []
        if archs:
            return archs[0] in self.architectures or archs[0] == self.classifier_architecture
        return hf.get("model_type") in self.model_types
