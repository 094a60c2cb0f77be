"""Read a .safetensors file as memory-mapped numpy arrays, without torch (bf16 stays raw uint16).

The file layout is an 8-byte little-endian header length, a JSON header naming each tensor's
dtype, shape and byte range, then the data. Mapping it costs no copy: pages load on first use.
The header is validated in full before anything is mapped (see read_header), so a view never
reaches past its tensor's bytes, whatever the file says.
"""

from __future__ import annotations

import json
import math
import mmap
import struct
from pathlib import Path
from typing import Any

import numpy as np

from pocketlm.common.errors import ArtifactError

# Every dtype the safetensors format defines, with its size in bytes; np.dtype where we read it.
ITEM_BYTES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "F64": 8,
    "I64": 8,
    "U64": 8,
}
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
MAX_HEADER_BYTES = 100_000_000  # the safetensors library's own limit
_ENTRY_KEYS = {"dtype", "shape", "data_offsets"}


def read_header(path: str | Path) -> tuple[dict[str, Any], int]:
    """(header without __metadata__, offset of the data section), validated against the file.

    Raises ArtifactError naming the file (and the tensor) when the header is not a JSON object
    of tensors with a known dtype, a shape of non-negative ints and a byte range of exactly
    shape x itemsize bytes, the ranges tiling the data section from its start to the file's end
    (in order, no gaps, no overlaps: what the safetensors library itself requires).
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            raw = fh.read(8)
            if len(raw) < 8:
                raise ArtifactError(f"{path}: not a safetensors file ({size} bytes, too short)")
            (n,) = struct.unpack("<Q", raw)
            if n < 2 or n > MAX_HEADER_BYTES or 8 + n > size:
                raise ArtifactError(
                    f"{path}: corrupt safetensors header (says {n} bytes; the file has {size})"
                )
            text = fh.read(n)
    except OSError as exc:
        raise ArtifactError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    try:
        header = json.loads(text.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError, ValueError) as exc:
        raise ArtifactError(f"{path}: corrupt safetensors header ({exc})") from exc
    if not isinstance(header, dict):
        raise ArtifactError(f"{path}: corrupt safetensors header (not a JSON object)")
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not (
        isinstance(metadata, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())
    ):
        raise ArtifactError(f"{path}: corrupt safetensors header (__metadata__ is not str -> str)")
    for name, info in header.items():
        _check_entry(path, name, info)
    _check_layout(path, header, size - 8 - n)
    return header, 8 + n


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json object hook: a key given twice is an error (the last one would win silently)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"key {key!r} appears twice")
        out[key] = value
    return out


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _check_entry(path: Path, name: str, info: Any) -> None:
    """One tensor's header entry: known dtype, shape of counts, byte range of its exact size."""
    where = f"{path}: tensor {name!r}"
    if not name or not isinstance(info, dict) or set(info) != _ENTRY_KEYS:
        raise ArtifactError(f"{where}: header entry must hold exactly {sorted(_ENTRY_KEYS)}")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(dtype, str) or dtype not in ITEM_BYTES:
        raise ArtifactError(f"{where}: unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise ArtifactError(f"{where}: shape {shape!r} is not a list of non-negative ints")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_count, offsets))):
        raise ArtifactError(f"{where}: data_offsets {offsets!r} is not [start, end]")
    start, end = offsets
    want = math.prod(shape) * ITEM_BYTES[dtype]
    if end < start or end - start != want:
        raise ArtifactError(
            f"{where}: data_offsets {offsets} hold {end - start} bytes but "
            f"{dtype} {shape} needs {want}"
        )


def _check_layout(path: Path, header: dict[str, Any], data_bytes: int) -> None:
    """The byte ranges tile [0, data_bytes): in order, no gap, no overlap, nothing past the end."""
    at = 0
    for name, info in sorted(header.items(), key=lambda kv: tuple(kv[1]["data_offsets"])):
        start, end = info["data_offsets"]
        if start != at:
            what = "overlaps the tensor before it" if start < at else "leaves a gap before it"
            raise ArtifactError(
                f"{path}: tensor {name!r} starts at data byte {start}: it {what} (expected {at})"
            )
        if end > data_bytes:
            raise ArtifactError(
                f"{path}: tensor {name!r} runs past the end of the file (data byte {end} of "
                f"{data_bytes}): the file is truncated"
            )
        at = end
    if at != data_bytes:
        raise ArtifactError(
            f"{path}: {data_bytes - at} bytes after the last tensor: the file is corrupt"
        )


class MappedTensors:
    """name -> read-only numpy view on the mapped file; keep this object alive while views are used."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.header, offset = read_header(self.path)
        self._fh = open(self.path, "rb")  # noqa: SIM115 - lives as long as the mapping
        # read_header guarantees a non-empty file whose tensors all lie inside it.
        self._mm = mmap.mmap(self._fh.fileno(), 0, access=mmap.ACCESS_READ)
        if len(self._mm) != offset + _data_end(self.header):
            size = len(self._mm)
            self.close()
            raise ArtifactError(f"{self.path}: the file changed while it was opened ({size} bytes)")
        self._offset = offset

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


def _data_end(header: dict[str, Any]) -> int:
    return max((info["data_offsets"][1] for info in header.values()), default=0)
