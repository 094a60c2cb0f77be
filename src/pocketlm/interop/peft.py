"""`export peft`: a LoRA adapter as the directory the `peft` library loads onto the base's
`export hf` output: adapter_config.json (LORA, CAUSAL_LM, r, lora_alpha, target_modules, ...) and
adapter_model.safetensors with peft's tensor names (`base_model.model.<HF module>.lora_A.weight`).

PocketLM's LoRA is peft's (same A/B shapes, same scale alpha / rank or alpha / sqrt(rank)), so
`PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(HF_EXPORT), THIS_DIR)` computes
the logits PocketLM computes for base + adapter. Module names come from the family spec the HF
export writes (interop/families): Phi-2's fc1/fc2/dense and the like are renamed; a module the
family fuses (Phi-3's qkv_proj, gate_up_proj) gets one LoRA holding its members' exactly: A
stacks their A matrices, B is block-diagonal, so its rank is the members' ranks summed
(rank_pattern), alpha scaled to keep the same factor (alpha_pattern).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from pocketlm.checkpoint.adapted_model import read_lora_config
from pocketlm.checkpoint.adapters import load_adapter, resolve_adapter_dir
from pocketlm.checkpoint.model_check import check_model_dir
from pocketlm.checkpoint.weights_spec import expected_tensors
from pocketlm.common.errors import ArtifactError, UnsupportedModelError
from pocketlm.common.log import get_logger
from pocketlm.common.manifest import ArtifactWriter, parent_ref, read_manifest
from pocketlm.interop.families import FamilySpec
from pocketlm.interop.families import hf_config as family_config
from pocketlm.interop.hf_export import HF_EXPORT_KIND, export_family, import_source
from pocketlm.interop.open_model import model_dir as resolve_model
from pocketlm.model.config import ModelConfig
from pocketlm.model.lora import LoRAConfig
from pocketlm.model.quantized import LINEAR_NAMES

PEFT_EXPORT_KIND = "peft_export"
ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."  # PeftModelForCausalLM -> LoraModel -> the HF model
_LAYER = re.compile(r"^model\.layers\.(?P<i>\d+)\.(?P<inner>.+)$")
_log = get_logger("pocketlm.interop")


def _hf_module(spec: FamilySpec, path: str) -> tuple[str, str | None]:
    """(HF module path, the fused table entry holding it or None) of a PocketLM linear's path;
    ArtifactError for one peft cannot address (an expert inside a fused expert tensor)."""
    table = spec.hf_names
    layer = _LAYER.match(path)
    if layer is None:
        target = table.top.get(path)
        if target is None:
            raise ArtifactError(f"{path} has no {spec.architectures[0]} module for peft to wrap")
        return target, None
    inner, prefix = layer["inner"], table.layer_prefix.format(i=layer["i"])
    if ".experts." in f".{inner}":
        raise ArtifactError(
            f"LoRA on the expert {path}: transformers holds the experts of "
            f"{spec.architectures[0]} in fused tensors that peft's target_modules cannot name; "
            "merge the adapter (pocketlm merge) and export the merged model instead"
        )
    for fused, members in table.fused.items():
        if inner in members:
            return prefix + fused, fused
    target = table.layer.get(inner)
    if target is None:
        raise ArtifactError(f"{path} has no {spec.architectures[0]} module for peft to wrap")
    return prefix + target, None


def hf_linear_modules(spec: FamilySpec, config: ModelConfig) -> list[str]:
    """HF module paths of every linear of the base LoRA could wrap (for target_modules)."""
    out = ["lm_head"] if "lm_head" in spec.hf_names.top else []
    for hf_name, group in spec.hf_names.plan(config):
        module = group[0].rsplit(".", 2)
        if (
            hf_name.endswith(".weight")
            and module[-2] in LINEAR_NAMES
            and ".experts." not in hf_name
        ):
            out.append(hf_name.removesuffix(".weight"))
    return sorted(set(out))


def peft_target_modules(chosen: Sequence[str], all_modules: Sequence[str]) -> list[str]:
    """peft's target_modules for exactly `chosen` (HF module paths): the short leaf names when
    they pick out exactly those modules among `all_modules`, else the full paths."""
    leaves = sorted({m.rsplit(".", 1)[-1] for m in chosen})
    picked = {m for m in all_modules if m.rsplit(".", 1)[-1] in leaves}
    return leaves if picked == set(chosen) else sorted(chosen)


def peft_tensors(
    spec: FamilySpec,
    config: ModelConfig,
    lora: LoRAConfig,
    targets: Sequence[str],
    tensors: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """(peft's tensors by name, rank of each fused HF module) for an adapter's LoRA layers."""
    out: dict[str, torch.Tensor] = {}
    fused: dict[str, tuple[str, dict[str, str]]] = {}  # HF module -> (entry, member -> path)
    for path in targets:
        module, entry = _hf_module(spec, path)
        if entry is None:
            for part in ("lora_A", "lora_B"):
                source = tensors[f"{path}.{part}.weight"]
                out[f"{PEFT_PREFIX}{module}.{part}.weight"] = source.float()
        else:
            layer, inner = path.split(".", 3)[2], path.split(".", 3)[3]  # model.layers.{i}.inner
            fused.setdefault(module, (entry, {}))[1][inner] = f"model.layers.{layer}."
    shapes = expected_tensors(config, {"scheme": "none"})
    ranks: dict[str, int] = {}
    for module, (entry, present) in fused.items():
        members = spec.hf_names.fused[entry]
        prefix = next(iter(present.values()))  # model.layers.{i}.
        rows = [shapes[f"{prefix}{m}.weight"].shape[0] for m in members]
        starts = [sum(rows[:k]) for k in range(len(members))]
        chosen = [k for k, m in enumerate(members) if m in present]
        rank = lora.rank * len(chosen)
        a = torch.cat([tensors[f"{prefix}{members[k]}.lora_A.weight"].float() for k in chosen])
        b = torch.zeros(sum(rows), rank)
        for j, k in enumerate(chosen):
            block = tensors[f"{prefix}{members[k]}.lora_B.weight"].float()  # (rows[k], rank)
            b[starts[k] : starts[k] + rows[k], j * lora.rank : (j + 1) * lora.rank] = block
        out[f"{PEFT_PREFIX}{module}.lora_A.weight"] = a  # (rank, in): the members' A stacked
        out[f"{PEFT_PREFIX}{module}.lora_B.weight"] = b  # (rows, rank): block-diagonal
        ranks[module] = rank
    return {k: v.contiguous() for k, v in out.items()}, ranks


def _patterns(lora: LoRAConfig, ranks: dict[str, int]) -> tuple[dict[str, int], dict[str, float]]:
    """rank_pattern and alpha_pattern keyed by the fused modules' leaf names, alpha chosen so
    each keeps the adapter's scale; ArtifactError when one leaf needs different ranks."""
    by_leaf: dict[str, set[int]] = {}
    for module, rank in ranks.items():
        by_leaf.setdefault(module.rsplit(".", 1)[-1], set()).add(rank)
    rank_pattern, alpha_pattern = {}, {}
    for leaf, found in by_leaf.items():
        if len(found) > 1:
            raise ArtifactError(
                f"the adapter wraps different members of {leaf} in different layers; peft needs "
                "one rank per module name here: target the same modules in every layer"
            )
        rank = found.pop()
        rank_pattern[leaf] = rank
        alpha_pattern[leaf] = lora.scale * (math.sqrt(rank) if lora.rslora else rank)
    return rank_pattern, alpha_pattern


def _hf_base_path(hf_base: str | Path | None, base: Path) -> str | None:
    """The HF export's path for base_model_name_or_path, checked to be the export of `base`."""
    if hf_base is None:
        return None
    manifest = read_manifest(hf_base, kind=HF_EXPORT_KIND)
    want = parent_ref(base)["sha256"]
    if not any(p.get("sha256") == want for p in manifest.get("parents", [])):
        raise ArtifactError(
            f"{hf_base} is not the `export hf` output of {base} (its parent hashes differ); "
            f"export it with: pocketlm export hf --model {base} --out DIR"
        )
    return str(Path(hf_base).resolve())


def peft_adapter_config(
    lora: LoRAConfig,
    targets: list[str],
    base: str | None,
    rank_pattern: dict[str, int],
    alpha_pattern: dict[str, float],
) -> dict[str, Any]:
    """adapter_config.json contents (the LoraConfig fields peft reads)."""
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base,
        "revision": None,
        "inference_mode": True,
        "r": lora.rank,
        "lora_alpha": lora.alpha,
        "lora_dropout": lora.dropout,
        "target_modules": targets,
        "use_rslora": lora.rslora,
        "use_dora": False,
        "bias": "none",
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "modules_to_save": None,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": rank_pattern,
        "alpha_pattern": alpha_pattern,
    }


def export_peft(
    model_dir: str | Path,
    adapter_dir: str | Path,
    out: str | Path,
    *,
    hf_base: str | Path | None = None,
    command: Sequence[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a LoRA adapter of `model_dir` as a peft adapter directory (kind 'peft_export').

    hf_base: the base's `export hf` directory, written as base_model_name_or_path (so
    AutoPeftModelForCausalLM finds it); without it the field is null and the caller passes the
    HF model to PeftModel.from_pretrained.
    """
    from safetensors.torch import save_file

    base = resolve_model(model_dir)
    adapter = resolve_adapter_dir(adapter_dir)
    lora, targets = read_lora_config(adapter)
    tensors, _ = load_adapter(adapter, base=base)
    spec, config = export_family(check_model_dir(base).config, import_source(base))
    try:
        family_config.hf_config(spec, config, dtype="float32", token_ids={})
    except UnsupportedModelError as exc:
        raise ArtifactError(
            f"export peft: the base cannot be exported for transformers: {exc}"
        ) from exc
    if lora.base_quant != "none":
        _log.warning(
            "%s was trained over a %s-quantized copy of %s: on the float HF export its logits "
            "differ from PocketLM's by the quantization error",
            adapter,
            lora.base_quant,
            base,
        )
    state, ranks = peft_tensors(spec, config, lora, targets, tensors)
    rank_pattern, alpha_pattern = _patterns(lora, ranks)
    chosen = sorted({_hf_module(spec, t)[0] for t in targets})
    adapter_config = peft_adapter_config(
        lora,
        peft_target_modules(chosen, hf_linear_modules(spec, config)),
        _hf_base_path(hf_base, base),
        rank_pattern,
        alpha_pattern,
    )
    with ArtifactWriter(
        out,
        PEFT_EXPORT_KIND,
        config={"format": "peft", "adapter": str(adapter), "family": spec.name},
        parents=[parent_ref(base), parent_ref(adapter)],
        command=command,
        overwrite=overwrite,
    ) as art:
        art.path(ADAPTER_CONFIG_FILE).write_text(
            json.dumps(adapter_config, indent=2) + "\n", encoding="utf-8"
        )
        save_file(state, str(art.path(ADAPTER_WEIGHTS_FILE)), metadata={"format": "pt"})
        return art.commit({"tensors": len(state), "modules": len(chosen), "r": lora.rank})
