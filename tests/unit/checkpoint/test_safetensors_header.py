"""read_header / MappedTensors: every well-formed file reads back exactly, and any damage to a file
is an ArtifactError naming it, never another exception, and never a view past a tensor's bytes.
What the torch-free reader accepts, the safetensors library accepts with the same values."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import load_file, save_file

from pocketlm.checkpoint.safetensors_mmap import ITEM_BYTES, MappedTensors, read_header
from pocketlm.common.errors import ArtifactError

DTYPES = {"F32": np.float32, "F16": np.float16, "I8": np.int8, "U8": np.uint8, "I64": np.int64}
SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

tensor_dicts = st.dictionaries(
    st.text("abcdefghijklmnop._0123456789", min_size=1, max_size=12),
    st.tuples(st.sampled_from(sorted(DTYPES)), st.lists(st.integers(0, 5), min_size=0, max_size=3)),
    min_size=1,
    max_size=6,
)


def _arrays(spec: dict) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        name: np.asarray(rng.standard_normal(shape) * 50).astype(DTYPES[dtype])
        for name, (dtype, shape) in spec.items()
    }


def _check_invariants(path: Path, header: dict, offset: int) -> None:
    """What an accepted header promises: exact sizes, ranges tiling the data up to the end."""
    size = path.stat().st_size
    at = 0
    for info in sorted(header.values(), key=lambda i: tuple(i["data_offsets"])):
        start, end = info["data_offsets"]
        assert start == at and end - start == ITEM_BYTES[info["dtype"]] * int(
            np.prod(info["shape"], dtype=np.int64)
        )
        at = end
    assert offset + at == size


@SETTINGS
@given(spec=tensor_dicts)
def test_well_formed_files_read_back_exactly(tmp_path, spec):
    arrays = _arrays(spec)
    path = tmp_path / "t.safetensors"
    save_file(arrays, str(path), metadata={"format": "pt"})
    header, offset = read_header(path)
    _check_invariants(path, header, offset)
    mapped = MappedTensors(path)
    for name, arr in arrays.items():
        assert np.array_equal(mapped.get(name), arr) and mapped.get(name).dtype == arr.dtype


@SETTINGS
@given(spec=tensor_dicts, data=st.data())
def test_any_damage_is_an_artifact_error_or_a_file_the_library_reads_the_same(tmp_path, spec, data):
    path = tmp_path / "t.safetensors"
    save_file(_arrays(spec), str(path))
    raw = bytearray(path.read_bytes())
    (n,) = struct.unpack("<Q", raw[:8])
    how = data.draw(st.sampled_from(["overwrite", "truncate", "append", "length"]))
    if how == "overwrite":  # mostly inside the header, where structure lives
        for _ in range(data.draw(st.integers(1, 4))):
            i = data.draw(st.integers(0, min(len(raw) - 1, 8 + n + 8)))
            raw[i] = data.draw(st.integers(0, 255))
    elif how == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    elif how == "append":
        raw += bytes(data.draw(st.integers(1, 16)))
    else:
        raw[:8] = struct.pack("<Q", data.draw(st.integers(0, 2**64 - 1)))
    path.write_bytes(bytes(raw))
    try:
        header, offset = read_header(path)
    except ArtifactError as exc:
        assert str(path) in str(exc)
        return
    _check_invariants(path, header, offset)
    mapped, library = MappedTensors(path), load_file(str(path))
    assert set(library) == set(mapped.names())
    for name in library:
        got = mapped.get(name)
        assert got.shape == library[name].shape
        assert got.tobytes() == library[name].tobytes()


def _write(path: Path, header: dict | str, data: bytes) -> Path:
    text = header if isinstance(header, str) else json.dumps(header)
    body = text.encode()
    path.write_bytes(struct.pack("<Q", len(body)) + body + data)
    return path


@pytest.mark.parametrize(
    ("header", "data", "message"),
    [
        ('{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
         '"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}', 8, "'a' appears twice"),
        ({"a": {"dtype": "F33", "shape": [1], "data_offsets": [0, 4]}}, 4, "tensor 'a': unknown dtype 'F33'"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, 4, "tensor 'a': data_offsets [0, 4] hold 4 bytes but F32 [2] needs 8"),
        ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
          "b": {"dtype": "F32", "shape": [1], "data_offsets": [2, 6]}}, 8, "tensor 'b' starts at data byte 2: it overlaps"),
        ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, 8, "tensor 'a' starts at data byte 4: it leaves a gap"),
        ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, 2, "tensor 'a' runs past the end of the file"),
        ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, 9, "5 bytes after the last tensor"),
        ({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, 4, "shape [-1] is not a list"),
        ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "x": 1}}, 4, "must hold exactly"),
        ({"__metadata__": {"format": 1}}, 0, "__metadata__ is not str -> str"),
        ("[1, 2]", 0, "not a JSON object"),
    ],
)  # fmt: skip
def test_each_broken_rule_is_named(tmp_path, header, data, message):
    path = _write(tmp_path / "w.safetensors", header, bytes(data))
    with pytest.raises(ArtifactError, match=message.replace("[", r"\[").replace("]", r"\]")) as exc:
        read_header(path)
    assert str(path) in str(exc.value)
