"""Which exported artifact a model path is: an `export onnx` directory or a `.gguf` file (both
run by their own backends: engine/onnx_backend.py, engine/gguf_backend.py), without torch."""

from __future__ import annotations

from pathlib import Path

from pocketlm.common.errors import ArtifactError
from pocketlm.common.manifest import MANIFEST_NAME, read_manifest
from pocketlm.interop.onnx_files import ONNX_CONFIG_FILE, ONNX_FILE
from pocketlm.interop.open_model import ONNX_KIND

ONNX, GGUF = "onnx", "gguf"


def exported_format(path: str | Path) -> str | None:
    """ONNX for an `export onnx` directory, GGUF for a .gguf file, else None (a model artifact,
    a run or a Hugging Face folder: interop.open_model resolves those)."""
    p = Path(path)
    if p.is_file() and p.suffix.lower() == ".gguf":
        return GGUF
    if p.is_dir() and (p / MANIFEST_NAME).is_file() and (p / ONNX_CONFIG_FILE).is_file():
        try:
            return ONNX if read_manifest(p)["kind"] == ONNX_KIND else None
        except ArtifactError:
            return None
    return None


def exported_weights(path: str | Path) -> Path:
    """The file holding an exported model's weights: model.onnx in the directory, the .gguf."""
    p = Path(path)
    return p / ONNX_FILE if exported_format(p) == ONNX else p
