"""A training run's checkpoints: `checkpoints/step-NNNNNNN/`, newest-complete lookup, keep-last-N."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

_STEP_RE = re.compile(r"^step-(\d+)$")


def checkpoint_name(step: int) -> str:
    """Directory name for the checkpoint after `step` optimizer steps."""
    return f"step-{step:07d}"


def list_checkpoints(directory: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (they have a manifest) sorted by step; temp dirs are ignored."""
    d = Path(directory)
    if not d.is_dir():
        return []
    found = []
    for p in d.iterdir():
        m = _STEP_RE.match(p.name)
        if m and (p / "manifest.json").is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The newest complete checkpoint, or None."""
    found = list_checkpoints(directory)
    return found[-1][1] if found else None


def prune_checkpoints(directory: str | Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` checkpoints (and stale temp dirs); returns what was removed."""
    d = Path(directory)
    removed = []
    found = list_checkpoints(d)
    for _, p in found[: max(0, len(found) - max(1, keep))]:
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    if d.is_dir():
        for p in d.glob(".step-*.tmp-*"):
            shutil.rmtree(p, ignore_errors=True)
    return removed


def is_run_dir(directory: str | Path) -> bool:
    """True for a training run's directory (it has run_config.json, checkpoints/ or model/)."""
    d = Path(directory)
    return d.is_dir() and any(
        (d / name).exists() for name in ("run_config.json", "checkpoints", "model")
    )


def run_status(directory: str | Path) -> dict:
    """What state a training run is in: "finished" (its final model is written), "interrupted"
    (checkpoints but no final model: --resume continues it), or "started" (no checkpoint yet),
    with the task, steps, tokens and last validation numbers where known."""
    import json

    from pocketlm.common.manifest import read_manifest

    d = Path(directory)
    status: dict = {"run": str(d)}
    if (d / "run_config.json").is_file():
        described = json.loads((d / "run_config.json").read_text(encoding="utf-8"))
        status["task"] = described.get("task")
        status["budget"] = described.get("train", {}).get("budget")
    checkpoints = list_checkpoints(d / "checkpoints")
    if checkpoints:
        status["checkpoints"] = [step for step, _ in checkpoints]
    if (d / "model" / "manifest.json").is_file():
        summary = read_manifest(d / "model").get("summary", {})
        status["state"] = "finished"
        status["model"] = str(d / "model")
        status.update({k: summary[k] for k in ("steps", "tokens", "val_bpb") if k in summary})
    elif checkpoints:
        status["state"] = "interrupted"
        status["steps"] = checkpoints[-1][0]
    else:
        status["state"] = "started"
    return status
