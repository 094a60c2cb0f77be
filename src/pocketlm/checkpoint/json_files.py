"""The small JSON files of an artifact (quantization.json, the tokenizer's side files), read
strictly: anything but a readable JSON object is an ArtifactError naming the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pocketlm.common.errors import ArtifactError


def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in `path`; ArtifactError naming the file when unreadable or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ArtifactError(f"{path}: corrupt ({exc})") from exc
    if not isinstance(data, dict):
        raise ArtifactError(f"{path}: corrupt (not a JSON object)")
    return data
