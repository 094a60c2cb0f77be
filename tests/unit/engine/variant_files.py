"""The directory of a corrupted model variant (loader fuzz test): its file names, reads and
writes that never reach the base model through a hard link, and resealing its manifest."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import struct
from pathlib import Path
from typing import Any

WEIGHTS, CONFIG, QUANT, TOKENIZER = (
    "model.safetensors",
    "model_config.json",
    "quantization.json",
    "tokenizer.json",
)
SIDE_FILES = ("tokenizer_config.json", "special_tokens_map.json")
MANIFEST = "manifest.json"


class Files:
    """The variant directory: reads, and writes that never touch the base through a hard link."""

    def __init__(self, path: Path, rng: random.Random) -> None:
        self.path, self.rng = path, rng

    def read(self, name: str) -> bytes:
        return (self.path / name).read_bytes()

    def write(self, name: str, data: bytes) -> None:
        target = self.path / name
        if target.exists() or target.is_symlink():
            remove(target)
        target.write_bytes(data)

    def json(self, name: str) -> Any:
        return json.loads(self.read(name))

    def write_json(self, name: str, data: Any, indent: int | None = 2) -> None:
        self.write(name, (json.dumps(data, indent=indent) + "\n").encode())

    def has(self, name: str) -> bool:
        return (self.path / name).exists()

    # -- safetensors ---------------------------------------------------------------------------
    def header(self) -> tuple[list[list[Any]], int, bytes]:
        """([[name, entry], ...] in file order, header length, data bytes)."""
        raw = self.read(WEIGHTS)
        (n,) = struct.unpack("<Q", raw[:8])
        items = [[k, v] for k, v in json.loads(raw[8 : 8 + n]).items()]
        return items, n, raw[8 + n :]

    def write_header(
        self, items: list, data: bytes, pad_to: int | None = None, text: str = ""
    ) -> None:
        """A header from [name, entry] items (duplicates kept), padded with spaces to `pad_to`
        bytes when it fits (so the file keeps its size), else to a multiple of 8."""
        text = text or "{" + ",".join(f"{json.dumps(k)}:{json.dumps(v)}" for k, v in items) + "}"
        body = text.encode()
        target = pad_to if pad_to is not None and len(body) <= pad_to else -(-len(body) // 8) * 8
        body += b" " * (target - len(body))
        self.write(WEIGHTS, struct.pack("<Q", len(body)) + body + data)

    def tensors(self, items: list) -> list[list[Any]]:
        return [it for it in items if it[0] != "__metadata__"]


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def reseal(directory: Path) -> None:
    """Rewrite the manifest's files table to what is on disk now (as a rewriting tool would)."""
    path = directory / MANIFEST
    manifest = json.loads(path.read_bytes())
    files = {}
    for p in sorted(directory.iterdir()):
        if p.name != MANIFEST and p.is_file():
            files[p.name] = {
                "bytes": p.stat().st_size,
                "sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
            }
    manifest["files"] = files
    Files(directory, random.Random(0)).write_json(MANIFEST, manifest)
