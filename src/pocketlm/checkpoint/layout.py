"""Where things are in a model artifact, without importing torch (the native runtime starts fast)."""

from __future__ import annotations

from pathlib import Path

from pocketlm.common.errors import ArtifactError
from pocketlm.common.manifest import read_manifest

MODEL_KIND = "model"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "model_config.json"
QUANT_FILE = "quantization.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
# Files an imported model brings beside its tokenizer.json (generation defaults, chat template,
# sentencepiece model): kept unchanged, and carried into every model derived from it.
CARRIED_FILES = (
    "generation_config.json",
    "chat_template.jinja",
    "chat_template.json",
    "tokenizer.model",
)
HF_CONFIG_FILE = "config.json"


def refuse_pickles(directory: Path) -> None:
    """Raise for pickle-based weight files: loading them can run arbitrary code."""
    for p in directory.iterdir():
        if p.suffix in PICKLE_SUFFIXES and p.is_file():
            raise ArtifactError(
                f"{p}: refusing to load a pickle-based file (it can run arbitrary code). "
                "PocketLM loads safetensors only; convert it with safetensors.torch.save_file in a trusted environment"
            )


def resolve_model_dir(path: str | Path) -> Path:
    """A model artifact dir from: the dir itself, a training run (its final model or latest checkpoint)."""
    p = Path(path)
    if not p.exists():
        raise ArtifactError(f"{p}: no such model directory")
    if (p / "manifest.json").is_file():
        kind = read_manifest(p)["kind"]
        if kind == MODEL_KIND:
            return p
        if (p / HF_CONFIG_FILE).is_file():
            raise _hf_folder(p)
        raise _not_a_model(p, p, kind)
    if (p / HF_CONFIG_FILE).is_file():
        raise _hf_folder(p)
    if (p / "model" / "manifest.json").is_file():
        kind = read_manifest(p / "model")["kind"]
        if kind != MODEL_KIND:
            raise _not_a_model(p / "model", p, kind)
        return p / "model"
    from pocketlm.checkpoint.run_checkpoints import latest_checkpoint

    latest = latest_checkpoint(p / "checkpoints")
    if latest is not None:
        return latest
    refuse_pickles(p)
    raise ArtifactError(
        f"{p}: no PocketLM model here (no manifest.json, no model/ or checkpoints/)"
    )


def _not_a_model(directory: Path, given: Path, kind: str) -> ArtifactError:
    """The error for another artifact where a model was expected (an adapter says how to use it)."""
    if kind == "adapter":  # checkpoint/adapters.py
        return ArtifactError(
            f"{directory} is an adapter, not a model: pass the model it was trained on as "
            f"--model and {given} as --adapter"
        )
    return ArtifactError(f"{directory} is a '{kind}' artifact, not a model")


def _hf_folder(p: Path) -> ArtifactError:
    """The error for a Hugging Face folder reaching a loader that takes PocketLM artifacts only."""
    return ArtifactError(
        f"{p} is a Hugging Face model folder ({HF_CONFIG_FILE}): import it with "
        f"`pocketlm import {p} --out DIR`, or pass it to a command's --model, which imports it"
    )
