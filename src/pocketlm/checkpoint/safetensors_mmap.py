"""Read a .safetensors file as memory-mapped numpy arrays, without torch (bf16 stays raw uint16).

The file layout is an 8-byte little-endian header length, a JSON header naming each tensor's
dtype, shape and byte range, then the data. Mapping it costs no copy: pages load on first use.
"""

from __future__ import annotations

import json
import mmap
import struct
from pathlib import Path
from typing import Any

import numpy as np

from pocketlm.common.errors import ArtifactError

_DTYPES = {
    "F32": np.float32,
    "F16": np.float16,
    "BF16": np.uint16,
    "I8": np.int8,
    "U8": np.uint8,
    "I32": np.int32,
    "I64": np.int64,
    "F64": np.float64,
}


def read_header(path: str | Path) -> tuple[dict[str, Any], int]:
    """(header without __metadata__, offset of the data section)."""
    with open(path, "rb") as fh:
        raw = fh.read(8)
        if len(raw) < 8:
            raise ArtifactError(f"{path}: not a safetensors file (too short)")
        (n,) = struct.unpack("<Q", raw)
        if n > 100_000_000:
            raise ArtifactError(f"{path}: corrupt safetensors header (length {n})")
        try:
            header = json.loads(fh.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ArtifactError(f"{path}: corrupt safetensors header ({exc})") from exc
    header.pop("__metadata__", None)
    return header, 8 + n


class MappedTensors:
    """name -> read-only numpy view on the mapped file; keep this object alive while views are used."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.header, offset = read_header(self.path)
        self._fh = open(self.path, "rb")  # noqa: SIM115 - lives as long as the mapping
        size = self.path.stat().st_size
        self._mm = mmap.mmap(self._fh.fileno(), 0, access=mmap.ACCESS_READ) if size else None
        self._offset = offset
        for name, info in self.header.items():
            end = info["data_offsets"][1]
            if offset + end > size:
                raise ArtifactError(
                    f"{self.path}: tensor {name} runs past the end of the file: the file is truncated"
                )

    def __contains__(self, name: str) -> bool:
        return name in self.header

    def names(self) -> list[str]:
        return list(self.header)

    def dtype(self, name: str) -> str:
        return self.header[name]["dtype"]

    def get(self, name: str) -> np.ndarray:
        """The tensor as a numpy array (a view: no copy)."""
        info = self.header[name]
        if info["dtype"] not in _DTYPES:
            raise ArtifactError(f"{self.path}: tensor {name} has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]
        dtype = np.dtype(_DTYPES[info["dtype"]])
        count = (end - start) // dtype.itemsize
        arr = np.frombuffer(self._mm, dtype=dtype, count=count, offset=self._offset + start)
        return arr.reshape(info["shape"])

    def close(self) -> None:
        if self._mm is not None:
            self._mm.close()
        self._fh.close()
