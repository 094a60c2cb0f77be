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
