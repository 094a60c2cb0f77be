"""Tensor names of encoder checkpoints: the base model's own (BertModel: `embeddings.*`) or under
a head (`bert.embeddings.*`), legacy LayerNorm spellings, and heads PocketLM does not run.

A family's NameTable names tensors as a head model stores them. A base encoder is written
without the base prefix (the architecture written for it is the base model's), and a checkpoint
whose tensors lack the prefix is read without it. Decoder families pass through unchanged.
"""

from __future__ import annotations

from collections.abc import Collection

from pocketlm.interop.families.spec import FamilySpec
from pocketlm.model.config import ModelConfig

Plan = list[tuple[str, tuple[str, ...]]]  # (HF tensor, the PocketLM tensors it holds)
# transformers still reads LayerNorm weights named as TF-era BERT named them (its "legacy" rule)
_LEGACY_SUFFIXES = {"weight": "gamma", "bias": "beta"}
# buffers older checkpoints store beside the weights: position and token-type id ranges
_BUFFERS = (".position_ids", ".token_type_ids")


def export_names(spec: FamilySpec, config: ModelConfig) -> Plan:
    """The family's tensor plan for `config` as the architecture written for it names them (a
    base encoder's tensors without the base prefix)."""
    plan = spec.hf_names.plan(config)
    if spec.encoder is None or config.labels:
        return plan
    prefix = spec.encoder.base_prefix
    return [(name.removeprefix(prefix), ours) for name, ours in plan]


def checkpoint_names(spec: FamilySpec, plan: Plan, names: Collection[str]) -> Plan:
    """An import plan in the checkpoint's own spelling: a base model's tensors without the base
    prefix, LayerNorm.gamma / .beta where the checkpoint has those."""
    if spec.encoder is None:
        return plan
    prefix = spec.encoder.base_prefix
    prefixed = any(name.startswith(prefix) for name in names)
    out: Plan = []
    for name, ours in plan:
        if not prefixed:
            name = name.removeprefix(prefix)
        module, _, suffix = name.rpartition(".")
        legacy = f"{module}.{_LEGACY_SUFFIXES.get(suffix, suffix)}"
        if name not in names and module.endswith("LayerNorm") and legacy in names:
            name = legacy
        out.append((name, ours))
    return out


def dropped(spec: FamilySpec, name: str) -> bool:
    """Whether a checkpoint tensor belongs to a head PocketLM does not run (a masked-LM head) or
    is a stored index buffer: skipped on import."""
    if spec.encoder is None:
        return False
    return name.startswith(spec.encoder.dropped) or name.endswith(_BUFFERS)
