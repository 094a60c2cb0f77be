"""Tensor-by-tensor safetensors I/O without torch: read a (sharded) checkpoint one tensor at a
time, write a file whose header is known before any data.

Reads use plain file reads into one buffer per tensor, not a memory map: a mapped shard's pages
count towards the process's resident memory once touched, so importing through a map would hold
a whole shard; a read holds one tensor. Headers are validated (checkpoint.safetensors_mmap) before
any data is read.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pocketlm.checkpoint.safetensors_mmap import ITEM_BYTES, read_header
from pocketlm.common.errors import ArtifactError

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
# safetensors dtype -> numpy dtype of its raw values (bf16 stays raw uint16 bits)
NUMPY_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: its file, dtype, shape and absolute byte range."""

    path: Path
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


class SourceWeights:
    """The tensors of a Hugging Face model folder: model.safetensors, or the shards that
    model.safetensors.index.json lists (the index and the shards' headers must agree)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        index = self.folder / INDEX_FILE
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
                raise ArtifactError(f"{index}: not a safetensors index ({exc})") from exc
            shards = sorted(set(weight_map.values()))
        elif (self.folder / SINGLE_FILE).is_file():
            weight_map, shards = None, [SINGLE_FILE]
        else:
            raise ArtifactError(
                f"{self.folder}: no {SINGLE_FILE} or {INDEX_FILE}: PocketLM imports safetensors "
                "checkpoints"
            )
        self.files = [self.folder / s for s in shards]
        self.tensors: dict[str, TensorInfo] = {}
        for path in self.files:
            if not path.is_file():
                raise ArtifactError(f"{index}: lists shard {path.name}, which is missing")
            header, offset = read_header(path)
            for name, info in header.items():
                if name in self.tensors:
                    raise ArtifactError(f"{path}: tensor {name!r} is also in {self.tensors[name].path.name}")  # fmt: skip
                start, end = info["data_offsets"]
                self.tensors[name] = TensorInfo(
                    path, info["dtype"], tuple(info["shape"]), offset + start, offset + end
                )
        if weight_map is not None:
            for name, shard in weight_map.items():
                found = self.tensors.get(name)
                if found is None or found.path.name != shard:
                    where = found.path.name if found else "no shard"
                    raise ArtifactError(f"{index}: tensor {name!r} is listed in {shard} but found in {where}")  # fmt: skip

    def read(self, name: str) -> np.ndarray:
        """The tensor's values (bf16 as raw uint16 bits), read from disk into a fresh array."""
        info = self.tensors[name]
        if info.dtype not in NUMPY_DTYPES:
            raise ArtifactError(
                f"{info.path}: tensor {name!r} is {info.dtype}; PocketLM imports F32, F16 and BF16 "
                "weights"
            )
        out = np.empty(info.end - info.start, dtype=np.uint8)
        view = memoryview(out)
        with open(info.path, "rb", buffering=0) as fh:
            fh.seek(info.start)
            done = 0
            while done < len(view):
                n = fh.readinto(view[done:])
                if not n:
                    raise ArtifactError(f"{info.path}: ends inside tensor {name!r}: truncated")
                done += n
        return out.view(NUMPY_DTYPES[info.dtype]).reshape(info.shape)


@dataclass(frozen=True)
class OutTensor:
    """One tensor to write: name, safetensors dtype, shape and how to get its values."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    values: Callable[[], np.ndarray]


def write_safetensors(
    path: Path, tensors: Iterable[OutTensor], metadata: dict[str, str] | None = None
) -> int:
    """Write tensors in the given order, fetching each one's values only when its turn comes
    (at most one tensor in memory); returns the file's size. Each array must hold exactly the
    declared dtype and shape."""
    tensors = list(tensors)
    header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    at = 0
    for t in tensors:
        size = math.prod(t.shape) * ITEM_BYTES[t.dtype]
        header[t.name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [at, at + size]}
        at += size
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # data starts 8-byte aligned, as the safetensors library writes
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)))
        fh.write(raw)
        for t in tensors:
            values = np.ascontiguousarray(t.values())
            want = np.dtype(NUMPY_DTYPES[t.dtype])
            if values.dtype != want or values.shape != t.shape:
                raise ArtifactError(
                    f"internal error: tensor {t.name} came as {values.dtype} {values.shape}, "
                    f"declared {t.dtype} {t.shape}"
                )
            fh.write(values.data)
    return path.stat().st_size
