"""What an exported variant of `pocketlm compare` is, without running it: an `export onnx`
directory or a .gguf file, as it ships (no torch, no runtime opened).

Size is what shipping copies: the ONNX directory (graph, tokenizer, configs), the .gguf file
alone. Parameters are the source model's, as its export recorded them (ONNX: the manifest's
summary; GGUF: the source model its manifest names, None when gone).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pocketlm.common.errors import InputError, PocketLMError
from pocketlm.engine.exported import GGUF, ONNX


def exported_facts(path: Path, exported: str) -> dict[str, Any]:
    """The compare facts of an exported model (engine/exported.py's format `exported`); an ONNX
    classifier is refused (compare measures exported language models). Errors name `path`."""
    from pocketlm.pipelines.compare import directory_bytes

    try:
        if exported == ONNX:
            params, weights, size = _onnx(path)
        else:
            params, weights, size = _gguf(path)
    except PocketLMError as exc:
        raise InputError(f"cannot compare {path}: {exc}") from exc
    return {
        "path": str(path),
        "directory": str(path),
        "size_bytes": size if size is not None else directory_bytes(path),
        "size_mb": round((size if size is not None else directory_bytes(path)) / 1e6, 4),
        "params": params,
        "quantization": weights,
        "classifier": False,
        "exported": exported,
    }


def _onnx(path: Path) -> tuple[int | None, str, None]:
    from pocketlm.common.manifest import read_manifest
    from pocketlm.engine.onnx_backend import TEXT_GENERATION, read_onnx_config

    config = read_onnx_config(path)
    if config["task"] != TEXT_GENERATION:
        raise InputError(
            f"an ONNX {config['task']} export: compare measures exported language models; "
            "compare the classifier's model directory instead"
        )
    manifest = read_manifest(path)
    precision = manifest.get("config", {}).get("precision", "fp32")
    return manifest.get("summary", {}).get("params"), f"{ONNX} {precision}", None


def _gguf(path: Path) -> tuple[int | None, str, int]:
    from pocketlm.checkpoint.model_check import check_model_dir

    weights, params = GGUF, None
    manifest = path.with_name(path.name + ".manifest.json")
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
        weights = f"{GGUF} {data['type']}"
        params = check_model_dir(Path(data["parents"][0]["path"])).config.num_params()
    except (OSError, ValueError, KeyError, IndexError, TypeError, PocketLMError):
        pass  # a .gguf from elsewhere, or its source model gone: parameters not known
    return params, weights, path.stat().st_size
