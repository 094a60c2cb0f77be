"""A base model with a LoRA adapter on top: what a LoRA adapter artifact records, opening
base + adapter as one model, and merging the two into a new (float) model artifact.

An adapter artifact (checkpoint/adapters.py) holds the A/B tensors and the base's hashed
reference; its manifest's config holds `lora` (rank, alpha, dropout, rslora, base_quant,
group_size, the targets as given) and `target_modules` (the exact module paths wrapped), which is
all it takes to rebuild the same LoRA layers on the same base. An adapter trained for a
classifier also lists `modules_to_save` (modules stored whole: the score layer) and `classifier`
(its labels and pooling): loading turns a language-model base into that classifier first.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch

from pocketlm.checkpoint.adapters import ADAPTER_KIND, load_adapter, resolve_adapter_dir
from pocketlm.checkpoint.layout import resolve_model_dir
from pocketlm.checkpoint.model_io import (
    LoadedModel,
    load_model,
    save_model_state,
    weights_state_dict,
)
from pocketlm.common.errors import ArtifactError, ConfigError
from pocketlm.common.manifest import parent_ref, read_manifest
from pocketlm.model.classifier import to_classifier
from pocketlm.model.lora import (
    LoRAConfig,
    apply_lora,
    load_lora_state,
    lora_state_dict,
    merge_lora,
    quantize_base,
)
from pocketlm.model.multi_lora import AdapterRows, AdapterWeights, apply_adapters
from pocketlm.model.quantized import dequantize_modules, is_quantized

LORA_KEY = "lora"
TARGETS_KEY = "target_modules"
KEPT_KEY = "modules_to_save"  # modules stored whole in the adapter (peft's name)
CLASSIFIER_KEY = "classifier"  # {"labels": [...], "pooling": ...}: the adapter's model classifies


def lora_adapter_config(config: LoRAConfig, target_modules: Sequence[str]) -> dict[str, Any]:
    """The manifest config of a LoRA adapter: its settings and the exact modules it wraps."""
    return {LORA_KEY: asdict(config), TARGETS_KEY: list(target_modules)}


def read_lora_config(adapter_dir: str | Path) -> tuple[LoRAConfig, list[str]]:
    """(settings, wrapped module paths) of a LoRA adapter artifact; ArtifactError otherwise."""
    directory = Path(adapter_dir)
    config = read_manifest(directory, kind=ADAPTER_KIND).get("config", {})
    raw, targets = config.get(LORA_KEY), config.get(TARGETS_KEY)
    if not isinstance(raw, dict) or not isinstance(targets, list) or not targets:
        raise ArtifactError(
            f"{directory}: not a LoRA adapter (its manifest config has no '{LORA_KEY}' settings "
            f"and '{TARGETS_KEY}' list)"
        )
    known = {f.name for f in fields(LoRAConfig)}
    try:
        lora = LoRAConfig(**{k: v for k, v in raw.items() if k in known})
    except (TypeError, ValueError) as exc:
        raise ArtifactError(f"{directory}: bad LoRA settings in the manifest ({exc})") from exc
    if lora.rank < 1 or not all(isinstance(t, str) for t in targets):
        raise ArtifactError(f"{directory}: bad LoRA settings in the manifest (rank {lora.rank})")
    return lora, [str(t) for t in targets]


def load_adapted_model(
    model_dir: str | Path,
    adapter_dir: str | Path,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    shared_base: LoadedModel | None = None,
) -> LoadedModel:
    """The base model with the adapter's LoRA layers applied and loaded, on `device` in `dtype`
    (None: as stored); refuses an adapter trained on another base (or on a base since changed).

    shared_base: `model_dir` already loaded (on `device` in `dtype`): the adapted model shares
    its weights in memory instead of reading its own copy, and leaves it as it was (so several
    adapters run on one copy of the base).
    """
    base = resolve_model_dir(model_dir)
    adapter = resolve_adapter_dir(adapter_dir)
    lora, targets = read_lora_config(adapter)
    tensors, _ = load_adapter(adapter, base=base)  # checks the base's hash before loading it
    loaded = load_model(base) if shared_base is None else shared_base
    model = loaded.model if shared_base is None else _sharing_copy(loaded.model)
    _as_classifier(model, read_classifier(adapter), adapter)
    quantize_base(model, lora)
    apply_lora(model, lora.rank, lora.alpha, targets, rslora=lora.rslora)
    lora_names = set(lora_state_dict(model))
    kept = {k: v for k, v in tensors.items() if k not in lora_names}
    load_lora_state(model, {k: v for k, v in tensors.items() if k in lora_names}, str(adapter))
    _load_kept(model, kept, adapter)
    model = model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)
    model.eval()
    config = model.config
    return LoadedModel(model, config, loaded.tokenizer, loaded.directory, loaded.manifest)


def read_classifier(adapter_dir: str | Path) -> dict[str, Any] | None:
    """The classifier an adapter was trained for ({"labels", "pooling"}), or None."""
    config = read_manifest(Path(adapter_dir), kind=ADAPTER_KIND).get("config", {})
    head = config.get(CLASSIFIER_KEY)
    if head is None:
        return None
    if not isinstance(head, dict) or not isinstance(head.get("labels"), list):
        raise ArtifactError(f"{adapter_dir}: bad '{CLASSIFIER_KEY}' entry in the manifest config")
    return head


def _as_classifier(model: torch.nn.Module, head: dict[str, Any] | None, adapter: Path) -> None:
    """Turn a language-model base into the adapter's classifier (its head is then loaded from
    the adapter); a classifier base must have the adapter's labels."""
    if head is None:
        if model.config.labels:
            raise ArtifactError(f"{adapter}: a language-model adapter on a classifier base")
        return
    labels = tuple(head["labels"])
    if model.config.labels:
        if model.config.labels != labels:
            raise ArtifactError(
                f"{adapter} classifies {list(labels)}, its base {list(model.config.labels)}"
            )
        return
    try:
        to_classifier(model, labels, pooling=head.get("pooling", "last"))
    except ConfigError as exc:
        raise ArtifactError(f"{adapter}: {exc}") from exc


@torch.no_grad()
def _load_kept(model: torch.nn.Module, tensors: dict[str, torch.Tensor], adapter: Path) -> None:
    """Copy the modules an adapter stores whole (a classifier's score) into the model."""
    own = model.state_dict()
    for name, value in tensors.items():
        if name not in own or tuple(own[name].shape) != tuple(value.shape):
            raise ArtifactError(
                f"{adapter}: tensor {name} {tuple(value.shape)} does not fit the model"
            )
        own[name].copy_(value)


def load_multi_adapter_model(
    model_dir: str | Path,
    adapter_dirs: Sequence[str | Path],
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
) -> tuple[LoadedModel, AdapterRows]:
    """The base with every adapter's layers at once (adapter k: index k), each batch row
    running the one its AdapterRows entry names; ConfigError when they cannot share a batch
    (a QLoRA adapter, a quantized or mixture-of-experts base): serve them one model each."""
    base = resolve_model_dir(model_dir)
    weights = []
    for given in adapter_dirs:
        adapter = resolve_adapter_dir(given)
        lora, _ = read_lora_config(adapter)
        if lora.base_quant != "none":
            raise ConfigError(f"{adapter} is a QLoRA adapter: it runs on its own quantized base")
        if read_classifier(adapter) is not None:
            raise ConfigError(f"{adapter} is a classifier's adapter: it runs as its own model")
        tensors, _ = load_adapter(adapter, base=base)  # checks the base's hash
        weights.append(AdapterWeights(lora.scale, tensors, str(adapter)))
    loaded = load_model(base, device=device, dtype=dtype)
    if is_quantized(loaded.model) or loaded.config.n_experts:
        raise ConfigError(f"{base}: adapters share a batch only on a float dense base")
    selector = apply_adapters(loaded.model, weights, device=device, dtype=dtype)
    loaded.model.eval()
    return loaded, selector


def _sharing_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of the module tree holding the very same parameters and buffers: module surgery
    on the copy (wrapping linears, quantizing) leaves `model` as it is."""
    memo = {id(t): t for t in (*model.parameters(), *model.buffers())}
    return copy.deepcopy(model, memo)


def merge_adapter(
    model_dir: str | Path,
    adapter_dir: str | Path,
    out: str | Path,
    *,
    command: Sequence[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write base + adapter as one float model artifact (LoRA folded into the weights; a
    quantized base is dequantized first, so the result is float wherever the base was not)."""
    adapter = resolve_adapter_dir(adapter_dir)
    loaded = load_adapted_model(model_dir, adapter)
    model = merge_lora(loaded.model)
    quantized = is_quantized(model)
    if quantized:
        dequantize_modules(model)
    lora, targets = read_lora_config(adapter)
    return save_model_state(
        out,
        weights_state_dict(model),
        model.config,
        loaded.directory,
        parents=[parent_ref(loaded.directory), parent_ref(adapter)],
        config={"merged_adapter": str(adapter), LORA_KEY: asdict(lora)},
        summary={"merged_modules": len(targets), "dequantized_base": quantized},
        command=command,
        overwrite=overwrite,
    )
