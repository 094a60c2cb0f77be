"""Parameter-name maps from PocketLM's state dict to export formats, kept as data tables.

A map is two tables: names outside the layer stack, and per-layer names with `{layer}` standing
for the layer index. PocketLM already uses Hugging Face Llama names, so the HF maps are the
identity; they are spelled out anyway so every exported tensor is accounted for (anything not in
the table, e.g. a LoRA adapter or a quantization scale, is refused) and so GGUF/ONNX exporters
can add their own tables in the same shape.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from pocketlm.common.errors import ArtifactError

LAYER = "{layer}"
T = TypeVar("T")


@dataclass(frozen=True)
class NameMap:
    """PocketLM tensor name -> target tensor name, for the model as a whole and for each layer."""

    name: str
    top: Mapping[str, str]
    per_layer: Mapping[str, str]

    def expand(self, n_layers: int) -> dict[str, str]:
        """The full source -> target table for a model with n_layers layers."""
        table = dict(self.top)
        for i in range(n_layers):
            for src, dst in self.per_layer.items():
                table[src.replace(LAYER, str(i))] = dst.replace(LAYER, str(i))
        return table

    def with_entries(
        self,
        name: str,
        *,
        top: Mapping[str, str] | None = None,
        per_layer: Mapping[str, str] | None = None,
    ) -> NameMap:
        """A copy of this map under a new name, with extra entries."""
        return NameMap(name, {**self.top, **(top or {})}, {**self.per_layer, **(per_layer or {})})


_LLAMA_TOP = {
    "model.embed_tokens.weight": "model.embed_tokens.weight",
    "model.norm.weight": "model.norm.weight",
    "lm_head.weight": "lm_head.weight",  # absent when tied to the embeddings
}
_LLAMA_LAYER = {
    f"model.layers.{LAYER}.input_layernorm.weight": f"model.layers.{LAYER}.input_layernorm.weight",
    f"model.layers.{LAYER}.self_attn.q_proj.weight": f"model.layers.{LAYER}.self_attn.q_proj.weight",
    f"model.layers.{LAYER}.self_attn.k_proj.weight": f"model.layers.{LAYER}.self_attn.k_proj.weight",
    f"model.layers.{LAYER}.self_attn.v_proj.weight": f"model.layers.{LAYER}.self_attn.v_proj.weight",
    f"model.layers.{LAYER}.self_attn.o_proj.weight": f"model.layers.{LAYER}.self_attn.o_proj.weight",
    f"model.layers.{LAYER}.post_attention_layernorm.weight": f"model.layers.{LAYER}.post_attention_layernorm.weight",
    f"model.layers.{LAYER}.mlp.gate_proj.weight": f"model.layers.{LAYER}.mlp.gate_proj.weight",
    f"model.layers.{LAYER}.mlp.up_proj.weight": f"model.layers.{LAYER}.mlp.up_proj.weight",
    f"model.layers.{LAYER}.mlp.down_proj.weight": f"model.layers.{LAYER}.mlp.down_proj.weight",
}
_QKV_BIAS_LAYER = {
    f"model.layers.{LAYER}.self_attn.q_proj.bias": f"model.layers.{LAYER}.self_attn.q_proj.bias",
    f"model.layers.{LAYER}.self_attn.k_proj.bias": f"model.layers.{LAYER}.self_attn.k_proj.bias",
    f"model.layers.{LAYER}.self_attn.v_proj.bias": f"model.layers.{LAYER}.self_attn.v_proj.bias",
}

# transformers' LlamaForCausalLM (no biases anywhere).
HF_LLAMA = NameMap("hf-llama", _LLAMA_TOP, _LLAMA_LAYER)
# LlamaForCausalLM with attention_bias=True, for models with q/k/v biases. (transformers' Llama
# then also has an o_proj bias, which PocketLM lacks: the HF exporter writes it as zeros.)
HF_LLAMA_QKV_BIAS = HF_LLAMA.with_entries("hf-llama (attention_bias)", per_layer=_QKV_BIAS_LAYER)


def rename_state(
    state: Mapping[str, T], name_map: NameMap, n_layers: int, *, omit: Iterable[str] = ()
) -> dict[str, T]:
    """State dict under target names; raises ArtifactError for unmapped or missing tensors.

    `omit` lists target names that must not be written (e.g. a tied lm_head).
    """
    table = name_map.expand(n_layers)
    unknown = sorted(set(state) - set(table))
    if unknown:
        raise ArtifactError(
            f"{len(unknown)} tensor(s) have no {name_map.name} equivalent (e.g. {unknown[:3]}); "
            "merge adapters / dequantize the model before exporting it"
        )
    omitted = set(omit)
    out = {table[src]: tensor for src, tensor in state.items() if table[src] not in omitted}
    required = set(table.values()) - omitted
    missing = sorted(required - set(out))
    if missing:
        raise ArtifactError(
            f"the model lacks {len(missing)} tensor(s) that {name_map.name} needs (e.g. {missing[:3]})"
        )
    return out
