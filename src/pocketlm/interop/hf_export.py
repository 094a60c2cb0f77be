"""`export hf`: a model artifact as a directory `transformers` loads offline, as it is.

The directory holds config.json, generation_config.json, model.safetensors under Hugging Face
names (a tied lm_head is omitted, as transformers does), the model's tokenizer files copied
unchanged (with the chat template), a README.md model card and PocketLM's manifest.json.
`transformers` itself is not needed to export.

The family written is the model's own: a model imported from a Hugging Face folder (or quantized,
or otherwise derived from one: the manifests' lineage says so) goes back to its family (Phi-3's
fused tensors, Gemma's norm weights as Gemma stores them, the original token ids and generation
config) through the same FamilySpec its import used. PocketLM's own models are written as
LlamaForCausalLM; with q/k/v biases as Llama with attention_bias (o_proj's bias exact zeros), not as
Qwen2: transformers 5 loads a "qwen2" directory's tokenizer as Qwen2Tokenizer, which swaps in its
own normalizer (NFC) and pre-tokenizer (single digits), so token ids would silently differ.

A classifier (ModelConfig.labels) is written as its family's *ForSequenceClassification
(LlamaForSequenceClassification for PocketLM's own), `score.weight` and id2label / label2id, with
a pad_token_id always set (transformers refuses batches without one): the tokenizer's pad token,
else eos. transformers pools each row at its last token that is not pad_token_id, PocketLM at its
last real token by the attention mask: the two agree for every input whose own last token is not
that id (texts the tokenizer encodes never end with the pad token; with eos as the pad, texts
must not end with eos), padded on either side with it.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from pocketlm.checkpoint.layout import CARRIED_FILES
from pocketlm.checkpoint.model_io import load_model, weights_state_dict
from pocketlm.common.errors import ArtifactError, ConfigError, UnsupportedModelError
from pocketlm.common.manifest import ArtifactWriter, iter_lineage, parent_ref, read_manifest
from pocketlm.interop.families import FamilySpec, family_named
from pocketlm.interop.families import hf_config as family_config
from pocketlm.interop.families.encoder_names import export_names
from pocketlm.interop.families.llama import LLAMA
from pocketlm.interop.model_card import classifier_model_card, imported_model_card, model_card
from pocketlm.interop.open_model import model_dir as resolve_model
from pocketlm.model.config import ModelConfig
from pocketlm.model.quantized import dequantize_modules, is_quantized
from pocketlm.tokenizer.tokenizer import TOKENIZER_FILE, TOKENIZER_FILES, Tokenizer

HF_EXPORT_KIND = "hf_export"
HF_CONFIG_FILE = "config.json"
GENERATION_CONFIG_FILE = "generation_config.json"
HF_WEIGHTS_FILE = "model.safetensors"
MODEL_CARD_FILE = "README.md"

# --dtype name -> (config.json dtype string, torch dtype)
DTYPES: dict[str, tuple[str, torch.dtype]] = {
    "fp32": ("float32", torch.float32),
    "bf16": ("bfloat16", torch.bfloat16),
    "fp16": ("float16", torch.float16),
}


def import_source(directory: Path) -> dict[str, Any] | None:
    """The Hugging Face source a model artifact was imported from ({family, architecture,
    token_ids, ...} as hf_import recorded it), found through its manifests' parents; else None."""
    manifests = [read_manifest(directory)]
    for _, ref in iter_lineage(directory):
        path = Path(ref.get("path", ""))
        if ref.get("kind") == "model" and (path / "manifest.json").is_file():
            manifests.append(read_manifest(path))
    for manifest in manifests:
        source = (manifest.get("config") or {}).get("source")
        if isinstance(source, dict) and "family" in source:
            return source
    return None


def export_family(config: ModelConfig, source: Mapping[str, Any] | None) -> tuple[FamilySpec, ModelConfig]:  # fmt: skip
    """(family to write, config as written): the imported model's own family; for PocketLM's own
    models Llama, q/k/v biases carried by attention_bias with a zero o_proj bias."""
    if source is not None:
        return family_named(source["family"]), config
    if config.dim % config.n_heads:
        raise ArtifactError(
            f"transformers' LlamaConfig requires hidden_size ({config.dim}) to be a multiple of "
            f"num_attention_heads ({config.n_heads}), even with an explicit head_dim "
            f"({config.resolved_head_dim}); this model cannot be exported for transformers"
        )
    if config.qkv_bias and not config.o_bias:
        return LLAMA, replace(config, o_bias=True)  # o_proj's bias: written as zeros
    return LLAMA, config


def hf_state_dict(
    state: Mapping[str, torch.Tensor],
    config: ModelConfig,
    dtype: str = "fp32",
    spec: FamilySpec = LLAMA,
) -> dict[str, torch.Tensor]:
    """Tensors under the family's HF names (fused where it fuses them) cast to `dtype`; refuses
    unmapped, missing, non-float or non-finite tensors. A bias the family's config forces but the
    model lacks (Llama's o_proj with attention_bias) is written as zeros."""
    plan = export_names(spec, config)  # an encoder's base model: without its base prefix
    wanted = {name for _, group in plan for name in group}
    tied_head = {"lm_head.weight"} if config.tie_embeddings else set()
    unknown = sorted(set(state) - wanted - tied_head)
    if unknown:
        raise ArtifactError(
            f"{len(unknown)} tensor(s) have no {spec.architectures[0]} equivalent (e.g. "
            f"{unknown[:3]}); merge adapters / dequantize the model before exporting it"
        )
    target = DTYPES[dtype][1]
    out: dict[str, torch.Tensor] = {}
    for hf_name, group in plan:
        parts = []
        for name in group:
            if name in state:
                parts.append(state[name])
            elif name.endswith("o_proj.bias") and spec is LLAMA:
                parts.append(torch.zeros(config.dim))
            else:
                raise ArtifactError(f"the model lacks tensor {name!r}, which {spec.architectures[0]} needs")  # fmt: skip
        tensor = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
        if not tensor.is_floating_point():
            raise ArtifactError(
                f"tensor {hf_name} is {tensor.dtype}, not floating point (a quantized model?); "
                "export hf writes fp32/bf16/fp16 weights only"
            )
        if not torch.isfinite(tensor).all():
            raise ArtifactError(f"tensor {hf_name} holds NaN or inf values: the model is broken")
        cast = tensor.detach().to("cpu", target).contiguous()
        if not torch.isfinite(cast).all():
            raise ArtifactError(
                f"tensor {hf_name} overflows {dtype} (max |w| = {tensor.abs().max().item():.4g}); "
                "export with --dtype bf16 or fp32"
            )
        out[hf_name] = cast
    return out


def generation_config(tokenizer: Tokenizer) -> dict[str, Any]:
    """generation_config.json: generation stops at end-of-text and at the chat's end-of-turn."""
    return {
        "bos_token_id": tokenizer.bos_id,
        "eos_token_id": [tokenizer.eos_id, tokenizer.end_of_turn_id],
        "pad_token_id": tokenizer.pad_id,
    }


def export_hf(
    model_dir: str | Path,
    out: str | Path,
    *,
    dtype: str = "fp32",
    command: Sequence[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a transformers-loadable directory (kind 'hf_export') for a model artifact; returns its path."""
    from safetensors.torch import save_file

    if dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    directory = resolve_model(model_dir)
    source = import_source(directory)
    loaded = load_model(directory)
    spec, config = export_family(loaded.config, source)
    if source is not None:
        token_ids = source.get("token_ids") or {}
    else:
        tok = loaded.tokenizer
        token_ids = {"bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id, "pad_token_id": tok.pad_id}  # fmt: skip
    if config.labels:  # transformers classifies batches only with a pad_token_id
        token_ids = {**token_ids, "pad_token_id": classifier_pad_id(token_ids, loaded.tokenizer)}
    try:
        hf_json = family_config.hf_config(spec, config, dtype=DTYPES[dtype][0], token_ids=token_ids)
    except UnsupportedModelError as exc:
        raise ArtifactError(f"export hf: {exc}") from exc
    if is_quantized(loaded.model):
        # transformers has no int8-per-row / int4-group format of ours: write the weights the
        # quantized model actually computes with, as floats (same logits as the quantized model).
        dequantize_modules(loaded.model)
    state = hf_state_dict(weights_state_dict(loaded.model), config, dtype, spec)
    params = loaded.model.num_params()
    copied = [n for n in (*TOKENIZER_FILES, *CARRIED_FILES) if (directory / n).is_file()]
    if source is None:
        missing = [n for n in TOKENIZER_FILES if n not in copied]
    else:
        missing = [n for n in (TOKENIZER_FILE,) if n not in copied]
    if missing:
        raise ArtifactError(f"{directory}: missing tokenizer file(s) {missing}")
    architecture = hf_json["architectures"][0]  # a classifier's, an encoder's or the family's
    with ArtifactWriter(
        out,
        HF_EXPORT_KIND,
        config={"format": "hf", "dtype": dtype, "architecture": architecture, "family": spec.name},
        parents=[parent_ref(directory)],
        command=command,
        overwrite=overwrite,
    ) as art:
        _write_json(art.path(HF_CONFIG_FILE), hf_json)
        if GENERATION_CONFIG_FILE not in copied and config.has_lm_head:  # a model that generates
            _write_json(art.path(GENERATION_CONFIG_FILE), generation_config(loaded.tokenizer))
        save_file(state, str(art.path(HF_WEIGHTS_FILE)), metadata={"format": "pt"})
        for name in copied:
            shutil.copyfile(directory / name, art.path(name))
        if config.labels:
            card = classifier_model_card(
                config, architecture=architecture, dtype=dtype, params=params,
                source=str(directory), pad_id=token_ids["pad_token_id"],
            )  # fmt: skip
        elif source is None:
            card = model_card(
                config, loaded.tokenizer, dtype=dtype, params=params, source=directory
            )
        else:
            card = imported_model_card(
                config, architecture=architecture, dtype=dtype, params=params, source=source["path"]
            )
        art.path(MODEL_CARD_FILE).write_text(card, encoding="utf-8")
        return art.commit(
            {
                "architecture": architecture,
                "model_type": spec.model_types[0],
                "dtype": dtype,
                "params": params,
                "tensors": len(state),
                "weights_bytes": art.path(HF_WEIGHTS_FILE).stat().st_size,
            }
        )


def classifier_pad_id(token_ids: Mapping[str, Any], tokenizer: Tokenizer) -> int:
    """The pad_token_id a classifier is exported with: the model's pad token, else its eos (the
    first of several), else the tokenizer's own, else 0."""
    for key, own in (("pad_token_id", tokenizer.pad_id), ("eos_token_id", tokenizer.eos_id)):
        for value in (token_ids.get(key), own):
            if isinstance(value, list):
                value = value[0] if value else None
            if isinstance(value, int) and not isinstance(value, bool):
                return value
    return 0


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
