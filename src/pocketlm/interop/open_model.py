"""THE seam where a model path becomes a PocketLM model artifact: artifacts and training runs as
they are (checkpoint.layout.resolve_model_dir), Hugging Face folders imported on first use.

An HF folder (config.json, and no PocketLM model manifest: a downloaded model, a fine-tune, or
PocketLM's own `export hf`) is imported once into the cache (common.env.cache_dir()/imports, one
directory per source folder) and reused while every source file keeps its size and modification
time; a changed folder is imported again. A cache on disk, rather than converting in memory at
every start, because the native backend maps model.safetensors from disk, and because a second
start then costs nothing; the price is the disk space of one copy of the weights. Every engine,
evaluation, quantization and export entry point opens its model through model_dir().
"""

from __future__ import annotations

from pathlib import Path

from pocketlm.checkpoint.layout import HF_CONFIG_FILE, MODEL_KIND, resolve_model_dir
from pocketlm.common.env import cache_dir
from pocketlm.common.errors import ArtifactError
from pocketlm.common.hashing import sha256_bytes
from pocketlm.common.log import get_logger
from pocketlm.common.manifest import MANIFEST_NAME, read_manifest

_log = get_logger("pocketlm.interop.open")
ONNX_KIND = "onnx_export"  # interop/onnx_export.py's artifacts (not imported from torch here)


def is_hf_folder(path: str | Path) -> bool:
    """Whether `path` is a Hugging Face model folder rather than a PocketLM model artifact."""
    p = Path(path)
    if not (p / HF_CONFIG_FILE).is_file():
        return False
    if (p / MANIFEST_NAME).is_file():
        try:  # an ONNX export carries a config.json for other tools, and no weights to import
            return read_manifest(p)["kind"] not in (MODEL_KIND, ONNX_KIND)
        except ArtifactError:
            return True
    return True


def model_dir(path: str | Path, *, cache: str | Path | None = None) -> Path:
    """The model artifact to open for `path` (an artifact, a training run, or an HF folder,
    imported into `cache`, default common.env.cache_dir(), on first use)."""
    p = Path(path)
    if not is_hf_folder(p):
        return resolve_model_dir(p)
    root = Path(cache) if cache is not None else cache_dir()
    key = sha256_bytes(str(p.resolve()).encode("utf-8"))[:12]
    out = root / "imports" / f"{p.resolve().name}-{key}"
    if _still_current(out):
        return out
    from pocketlm.interop.hf_import import import_hf

    _log.info("importing the Hugging Face folder %s into %s (once: later runs reuse it)", p, out)
    return import_hf(p, out, overwrite=True)


def _still_current(imported: Path) -> bool:
    """Whether a cached import exists and every source file still has its size and mtime."""
    if not (imported / MANIFEST_NAME).is_file():
        return False
    try:
        source = read_manifest(imported, kind=MODEL_KIND)["config"]["source"]
        folder = Path(source["path"])
        for name, seen in source["files"].items():
            stat = (folder / name).stat()
            if (stat.st_size, stat.st_mtime_ns) != (seen["bytes"], seen["mtime_ns"]):
                return False
    except (ArtifactError, KeyError, TypeError, OSError):
        return False
    return True
