"""`export peft`: a LoRA adapter as the directory the `peft` library loads onto the base's
`export hf` output: adapter_config.json (LORA, CAUSAL_LM, r, lora_alpha, target_modules, ...) and
adapter_model.safetensors with peft's tensor names (`base_model.model.<HF module>.lora_A.weight`).

PocketLM's LoRA is peft's (same A/B shapes, same scale alpha / rank or alpha / sqrt(rank)), so
`PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(HF_EXPORT), THIS_DIR)` computes
the logits PocketLM computes for base + adapter. Module names go through the HF export's name map.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from pocketlm.checkpoint.adapted_model import read_lora_config
from pocketlm.checkpoint.adapters import load_adapter, resolve_adapter_dir
from pocketlm.checkpoint.layout import resolve_model_dir
from pocketlm.checkpoint.model_check import check_model_dir
from pocketlm.common.errors import ArtifactError
from pocketlm.common.log import get_logger
from pocketlm.common.manifest import ArtifactWriter, parent_ref, read_manifest
from pocketlm.export.hf import HF_EXPORT_KIND, check_representable, hf_name_map
from pocketlm.model.config import ModelConfig
from pocketlm.model.quantized import LINEAR_NAMES

PEFT_EXPORT_KIND = "peft_export"
ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."  # PeftModelForCausalLM -> LoraModel -> the HF model
_log = get_logger("pocketlm.export")


def hf_module_names(config: ModelConfig) -> dict[str, str]:
    """PocketLM module path -> HF module path for every linear LoRA can wrap."""
    table = hf_name_map(config).expand(config.n_layers)
    out: dict[str, str] = {}
    for src, dst in table.items():
        module, _, leaf = src.rpartition(".")
        if leaf == "weight" and (module == "lm_head" or module.rsplit(".", 1)[-1] in LINEAR_NAMES):
            out[module] = dst.removesuffix(".weight")
    return out


def peft_target_modules(chosen: Sequence[str], all_modules: Sequence[str]) -> list[str]:
    """peft's target_modules for exactly `chosen` (HF module paths): the short leaf names when
    they pick out exactly those modules among `all_modules`, else the full paths."""
    leaves = sorted({m.rsplit(".", 1)[-1] for m in chosen})
    picked = {m for m in all_modules if m.rsplit(".", 1)[-1] in leaves}
    return leaves if picked == set(chosen) else sorted(chosen)


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
    rank: int, alpha: float, dropout: float, rslora: bool, targets: list[str], base: str | None
) -> dict[str, Any]:
    """adapter_config.json contents (the LoraConfig fields peft reads)."""
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base,
        "revision": None,
        "inference_mode": True,
        "r": rank,
        "lora_alpha": alpha,
        "lora_dropout": dropout,
        "target_modules": targets,
        "use_rslora": rslora,
        "use_dora": False,
        "bias": "none",
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "modules_to_save": None,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
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

    base = resolve_model_dir(model_dir)
    adapter = resolve_adapter_dir(adapter_dir)
    lora, targets = read_lora_config(adapter)
    tensors, _ = load_adapter(adapter, base=base)
    config = check_model_dir(base).config
    check_representable(config)
    names = hf_module_names(config)
    unmapped = [t for t in targets if t not in names]
    if unmapped:
        raise ArtifactError(
            f"{adapter}: LoRA on {unmapped[0]} has no counterpart in the HF export's modules; "
            "merge the adapter instead (pocketlm merge) and export the merged model"
        )
    if lora.base_quant != "none":
        _log.warning(
            "%s was trained over a %s-quantized copy of %s: on the float HF export its logits "
            "differ from PocketLM's by the quantization error",
            adapter,
            lora.base_quant,
            base,
        )
    state: dict[str, torch.Tensor] = {}
    for path in targets:
        for part in ("lora_A", "lora_B"):
            value = tensors[f"{path}.{part}.weight"]
            state[f"{PEFT_PREFIX}{names[path]}.{part}.weight"] = value.float().contiguous()
    adapter_config = peft_adapter_config(
        lora.rank,
        lora.alpha,
        lora.dropout,
        lora.rslora,
        peft_target_modules([names[t] for t in targets], list(names.values())),
        _hf_base_path(hf_base, base),
    )
    with ArtifactWriter(
        out,
        PEFT_EXPORT_KIND,
        config={"format": "peft", "adapter": str(adapter)},
        parents=[parent_ref(base), parent_ref(adapter)],
        command=command,
        overwrite=overwrite,
    ) as art:
        art.path(ADAPTER_CONFIG_FILE).write_text(
            json.dumps(adapter_config, indent=2) + "\n", encoding="utf-8"
        )
        save_file(state, str(art.path(ADAPTER_WEIGHTS_FILE)), metadata={"format": "pt"})
        return art.commit({"tensors": len(state), "modules": len(targets), "r": lora.rank})
