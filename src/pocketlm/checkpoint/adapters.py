"""Adapter artifacts (kind 'adapter'): only the tensors a task trained, plus a reference to the
base model they apply to, pinned by the sha256 of the base's manifest (which lists the hash of
every base file). Loading checks the base is still the same before handing the tensors out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from pocketlm.common.errors import ArtifactError, OutOfSpaceError, is_out_of_space
from pocketlm.common.manifest import ArtifactWriter, parent_ref, read_manifest

ADAPTER_KIND = "adapter"
ADAPTER_FILE = "adapter.safetensors"


def save_adapter(
    out: str | Path,
    tensors: dict[str, torch.Tensor],
    base: str | Path,
    *,
    config: dict | None = None,
    summary: dict | None = None,
    command: Sequence[str] | None = None,
    overwrite: bool = False,
    extra: Callable[[ArtifactWriter], None] | None = None,
) -> Path:
    """Write an adapter artifact: `tensors` (names as in the model) and the base's reference."""
    from safetensors.torch import save_file

    if not tensors:
        raise ValueError("an adapter needs at least one tensor")
    base_ref = parent_ref(base)
    try:
        with ArtifactWriter(
            out,
            ADAPTER_KIND,
            config=config or {},
            parents=[base_ref],
            command=command,
            overwrite=overwrite,
        ) as art:
            save_file(
                {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()},
                str(art.path(ADAPTER_FILE)),
                metadata={"format": "pt", "producer": "pocketlm"},
            )
            if extra is not None:
                extra(art)
            counts = {"tensors": len(tensors), "params": sum(v.numel() for v in tensors.values())}
            return art.commit({"base": base_ref, **counts, **(summary or {})})
    except Exception as exc:  # safetensors wraps I/O errors in its own type
        if is_out_of_space(exc):
            raise OutOfSpaceError(
                f"out of disk space while saving {out}: nothing was replaced; free some space and resume"
            ) from exc
        raise


def load_adapter(
    directory: str | Path, *, base: str | Path | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, base reference) of an adapter; with `base`, checks it is the very base the
    adapter was trained on (same path or not, its manifest must hash the same)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    manifest = read_manifest(directory, kind=ADAPTER_KIND)
    ref = manifest.get("summary", {}).get("base")
    if not isinstance(ref, dict) or "sha256" not in ref:
        raise ArtifactError(f"{directory}: the manifest names no base model")
    if base is not None:
        now = parent_ref(base)
        if now["sha256"] != ref["sha256"]:
            raise ArtifactError(
                f"{directory} was trained on the base {ref.get('path')} (manifest sha256 "
                f"{ref['sha256'][:12]}…), but {now['path']} hashes {now['sha256'][:12]}…: "
                "it is another model, or it changed since"
            )
    path = directory / ADAPTER_FILE
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise ArtifactError(f"{path}: cannot read the adapter tensors ({exc})") from exc
    return tensors, ref


def resolve_adapter_dir(path: str | Path) -> Path:
    """An adapter artifact dir from: the dir itself, or a training run (its final adapter, else
    its latest checkpoint)."""
    from pocketlm.checkpoint.run_checkpoints import latest_checkpoint

    p = Path(path)
    if not p.exists():
        raise ArtifactError(f"{p}: no such adapter directory")
    for candidate in (p, p / "model"):
        if (candidate / "manifest.json").is_file():
            read_manifest(candidate, kind=ADAPTER_KIND)  # says what it is when not an adapter
            return candidate
    latest = latest_checkpoint(p / "checkpoints")
    if latest is not None:
        read_manifest(latest, kind=ADAPTER_KIND)
        return latest
    raise ArtifactError(f"{p}: no adapter here (no manifest.json, no model/ or checkpoints/)")
