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
    for candidate in (p, p / "model"):
        if (candidate / "manifest.json").is_file():
            kind = read_manifest(candidate)["kind"]
            if kind == MODEL_KIND:
                return candidate
            if kind == "adapter":  # checkpoint/adapters.py
                raise ArtifactError(
                    f"{candidate} is an adapter, not a model: pass the model it was trained on "
                    f"as --model and {p} as --adapter"
                )
            raise ArtifactError(f"{candidate} is a '{kind}' artifact, not a model")
    from pocketlm.checkpoint.run_checkpoints import latest_checkpoint

    latest = latest_checkpoint(p / "checkpoints")
    if latest is not None:
        return latest
    refuse_pickles(p)
    raise ArtifactError(
        f"{p}: no PocketLM model here (no manifest.json, no model/ or checkpoints/)"
    )
