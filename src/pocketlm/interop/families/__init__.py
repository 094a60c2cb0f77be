"""Model families as data: one FamilySpec per family, and finding the one a config.json names.

Dispatch reads config.json's `architectures` (else `model_type`), never a folder name, so a
fine-tune or a renamed copy imports the same. Each spec serves import (hf_import), HF export
(hf_export) and GGUF export (gguf_export).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pocketlm.common.errors import UnsupportedModelError
from pocketlm.interop.families.albert import ALBERT
from pocketlm.interop.families.bert import BERT, DISTILBERT
from pocketlm.interop.families.gemma import GEMMA, GEMMA2, GEMMA3
from pocketlm.interop.families.llama import LLAMA, MISTRAL
from pocketlm.interop.families.mobilebert import MOBILEBERT
from pocketlm.interop.families.moe import MIXTRAL, QWEN2_MOE, QWEN3_MOE
from pocketlm.interop.families.phi import PHI, PHI3
from pocketlm.interop.families.qwen import QWEN2, QWEN3
from pocketlm.interop.families.spec import FamilySpec, NameTable

__all__ = ["FAMILIES", "FamilySpec", "NameTable", "family_named", "find_family"]

FAMILIES: tuple[FamilySpec, ...] = (
    LLAMA, MISTRAL, QWEN2, QWEN3, PHI, PHI3, GEMMA, GEMMA2, GEMMA3, MIXTRAL, QWEN2_MOE, QWEN3_MOE,
    BERT, DISTILBERT, ALBERT, MOBILEBERT,
)  # fmt: skip

# Architectures that are close to a supported one but are not it: say what to do instead.
_NOT_YET = {
    "Gemma3ForConditionalGeneration": "the multimodal Gemma 3 (4B and up); PocketLM imports the "
    "text-only Gemma3ForCausalLM (gemma-3-1b / gemma-3-270m)",
}


def find_family(hf: Mapping[str, Any], where: str = "config.json") -> FamilySpec:
    """The spec of the family a config.json names; UnsupportedModelError naming it otherwise."""
    archs = hf.get("architectures") or []
    if not isinstance(archs, list) or not all(isinstance(a, str) for a in archs):
        raise UnsupportedModelError(f"{where}: architectures must be a list of names, got {archs!r}")  # fmt: skip
    for spec in FAMILIES:
        if spec.matches(hf):
            return spec
    named = archs[0] if archs else f"model_type {hf.get('model_type')!r}"
    why = _NOT_YET.get(archs[0] if archs else "", "not a supported family")
    supported = ", ".join(s.architectures[0] for s in FAMILIES)
    raise UnsupportedModelError(f"{where}: {named} is {why} (supported: {supported})")


def family_named(name: str) -> FamilySpec:
    """The spec called `name` ("llama", "gemma2", ...)."""
    for spec in FAMILIES:
        if spec.name == name:
            return spec
    raise UnsupportedModelError(f"unknown model family {name!r}")
