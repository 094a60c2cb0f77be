"""Save and load model artifacts (kind 'model'): safetensors weights, config, tokenizer, manifest.

Writes go through ArtifactWriter (temp dir + rename), so a crash or a full disk never leaves a
half-written checkpoint under its final name. Nothing here unpickles: pickle-based weight files
are refused with a message saying how to convert them.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pocketlm.checkpoint import weights_spec
from pocketlm.checkpoint.layout import (
    CARRIED_FILES,
    CONFIG_FILE,
    MODEL_KIND,
    WEIGHTS_FILE,
    refuse_pickles,
    resolve_model_dir,
)
from pocketlm.checkpoint.model_check import check_model_dir
from pocketlm.checkpoint.safetensors_mmap import read_header
from pocketlm.common.errors import ArtifactError, OutOfSpaceError, is_out_of_space
from pocketlm.common.manifest import ArtifactWriter, read_manifest
from pocketlm.model.config import ModelConfig
from pocketlm.model.quantized import quantize_modules
from pocketlm.model.transformer import CausalLM, materialize
from pocketlm.tokenizer.tokenizer import (
    TOKENIZER_CONFIG_FILE,
    TOKENIZER_FILE,
    TOKENIZER_FILES,
    Tokenizer,
)

__all__ = [
    "CONFIG_FILE",
    "MODEL_KIND",
    "WEIGHTS_FILE",
    "LoadedModel",
    "load_model",
    "read_weights",
    "resolve_model_dir",
    "save_model",
    "save_model_state",
]


@dataclass
class LoadedModel:
    """A model ready to use, with everything that describes it."""

    model: CausalLM
    config: ModelConfig
    tokenizer: Tokenizer
    directory: Path
    manifest: dict[str, Any]


def weights_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """State dict for saving: a tied LM head is dropped (as in HF), tensors contiguous and on CPU."""
    state = model.state_dict()
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "tie_embeddings", False):
        state = {k: v for k, v in state.items() if not _tied_head_tensor(k)}
    return {k: v.detach().to("cpu").contiguous() for k, v in state.items()}


def _tied_head_tensor(name: str) -> bool:
    """Whether a state-dict entry is the LM head's share of tied embeddings (its own bias is not)."""
    return name.startswith("lm_head.") and name != "lm_head.bias"


def save_model(
    out: str | Path,
    model: CausalLM,
    tokenizer_dir: str | Path,
    **kwargs: Any,
) -> Path:
    """Write a model artifact from a live model (see save_model_state for the keywords)."""
    return save_model_state(out, weights_state_dict(model), model.config, tokenizer_dir, **kwargs)


def save_model_state(
    out: str | Path,
    state: dict[str, torch.Tensor],
    model_config: ModelConfig,
    tokenizer_dir: str | Path,
    *,
    parents: Sequence[dict] = (),
    config: dict | None = None,
    summary: dict | None = None,
    command: Sequence[str] | None = None,
    overwrite: bool = False,
    extra: Callable[[ArtifactWriter], None] | None = None,
) -> Path:
    """Write a model artifact from a whole CPU state dict; `extra(art)` may add files (e.g.
    train state) before the commit. A tied LM head is not stored (as in HF)."""
    from safetensors.torch import save_file

    if model_config.tie_embeddings:
        state = {k: v for k, v in state.items() if not _tied_head_tensor(k)}
    out = Path(out)
    try:
        with ArtifactWriter(
            out,
            MODEL_KIND,
            config=config or {},
            parents=parents,
            command=command,
            overwrite=overwrite,
        ) as art:
            save_file(
                {k: v.contiguous() for k, v in state.items()},
                str(art.path(WEIGHTS_FILE)),
                metadata={"format": "pt", "producer": "pocketlm"},
            )
            model_config.save(art.path(CONFIG_FILE))
            for name in (*TOKENIZER_FILES, *CARRIED_FILES):
                # tokenizer.json always; the rest as the tokenizer (or imported model) has them
                if name == TOKENIZER_FILE or (Path(tokenizer_dir) / name).is_file():
                    shutil.copyfile(Path(tokenizer_dir) / name, art.path(name))
            if art.path(TOKENIZER_CONFIG_FILE).is_file():
                _set_model_max_length(art.path(TOKENIZER_CONFIG_FILE), model_config.max_seq_len)
            if extra is not None:
                extra(art)
            base = {"params": model_config.num_params(), "model": model_config.to_dict()}
            return art.commit({**base, **(summary or {})})
    except Exception as exc:  # safetensors wraps I/O errors in its own type
        if is_out_of_space(exc):
            raise OutOfSpaceError(
                f"out of disk space while saving {out}: nothing was replaced, earlier checkpoints are intact; "
                "free some space (or keep fewer checkpoints with --set train.keep_checkpoints=1) and resume"
            ) from exc
        raise


def _set_model_max_length(path: Path, max_len: int) -> None:
    """transformers truncates and warns by tokenizer_config's model_max_length: make it the model's."""
    data = json.loads(path.read_text(encoding="utf-8"))
    data["model_max_length"] = max_len
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def read_weights(directory: Path) -> dict[str, torch.Tensor]:
    """The state dict of a model artifact, checked against its manifest (size) and readable."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    refuse_pickles(directory)
    manifest = read_manifest(directory, kind=MODEL_KIND)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise ArtifactError(f"{directory}: missing {WEIGHTS_FILE}")
    listed = manifest.get("files", {}).get(WEIGHTS_FILE)
    if listed and weights.stat().st_size != listed["bytes"]:
        raise ArtifactError(
            f"{weights}: {weights.stat().st_size} bytes but the manifest says {listed['bytes']}: the checkpoint is truncated or corrupt"
        )
    read_header(weights)  # the same layout checks the native loader makes, with the same errors
    try:
        return load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise ArtifactError(
            f"{weights}: cannot read the weights ({exc}); the checkpoint is corrupt"
        ) from exc


def load_model(
    path: str | Path, *, device: torch.device | str = "cpu", dtype: torch.dtype | None = None
) -> LoadedModel:
    """Load a model artifact (or a run's final model / latest checkpoint) onto `device`, its
    float tensors in `dtype` (None: as stored); every file is checked first (check_model_dir)."""
    checked = check_model_dir(resolve_model_dir(path))
    directory, config, quant = checked.directory, checked.config, checked.quant
    state = read_weights(directory)
    with torch.device("meta"):
        model = CausalLM(config)
        if quant["scheme"] in ("int8", "int4"):
            quantize_modules(model, quant["scheme"], quant.get("group_size") or 32, empty=True)
    model = build_model_from_state(model, config, state, directory)
    # Quantized layers keep integer weights and their scales whatever the dtype; their
    # activations (and float parts: norms, biases) take it.
    model = model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)
    model.eval()
    return LoadedModel(model, config, checked.tokenizer, directory, checked.manifest)


def read_quantization(directory: Path) -> dict[str, Any]:
    """The artifact's quantization.json, validated ({'scheme': 'none'} for a float model)."""
    return weights_spec.read_quantization(directory)


def build_model_from_state(
    meta_model: CausalLM, config: ModelConfig, state: dict[str, torch.Tensor], where: Path
) -> CausalLM:
    """Materialise a meta-device model from a state dict, with clear errors for mismatches."""
    expected = {
        k for k in meta_model.state_dict() if not (config.tie_embeddings and _tied_head_tensor(k))
    }
    missing, unexpected = expected - set(state), set(state) - expected
    if missing or unexpected:
        raise ArtifactError(
            f"{where}: weights do not match the config (missing: {sorted(missing)[:5]}, unexpected: {sorted(unexpected)[:5]})"
        )
    model = materialize(meta_model)
    try:
        model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise ArtifactError(
            f"{where}: weight shapes do not match the config ({str(exc).splitlines()[-1].strip()})"
        ) from exc
    return model
