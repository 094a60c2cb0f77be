"""Mutations of model.safetensors for the loader fuzz test (see loader_mutations): the length
prefix, header bytes, an entry's dtype, shape or byte range, tensors dropped, renamed, added or
resized (as well-formed files too), __metadata__, and meaning-keeping reformatting."""

from __future__ import annotations

import json
import random
import struct

from tests.unit.engine.variant_files import WEIGHTS, Files

ITEM_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2, "I32": 4}
ITEM_BYTES |= {"U32": 4, "F32": 4, "F64": 8, "I64": 8, "U64": 8, "F8_E5M2": 1, "F8_E4M3": 1}


def _entry_bytes(entry: dict) -> int:
    return entry["data_offsets"][1] - entry["data_offsets"][0]


def _relayout(items: list, data: bytes, drop: str | None = None, extra: bytes = b"") -> bytes:
    """Rewrite offsets of the kept tensors to tile the data again (dropping one), return data."""
    out, at = b"", 0
    for name, entry in list(items):
        if name == "__metadata__":
            continue
        if name == drop:
            items.remove([name, entry])
            continue
        start, end = entry["data_offsets"]
        out += data[start:end]
        entry["data_offsets"] = [at, at + end - start]
        at += end - start
    return out + extra


def w_truncate(f: Files, rng: random.Random, resealed: bool) -> str:
    raw = f.read(WEIGHTS)
    (n,) = struct.unpack("<Q", raw[:8])
    cut = rng.choice([rng.randrange(0, 8), rng.randrange(8, 8 + n), rng.randrange(8 + n, len(raw))])
    f.write(WEIGHTS, raw[:cut])
    return f"cut to {cut} of {len(raw)} bytes"


def w_append(f: Files, rng: random.Random, resealed: bool) -> str:
    extra = rng.randbytes(rng.randrange(1, 65))
    f.write(WEIGHTS, f.read(WEIGHTS) + extra)
    return f"{len(extra)} bytes appended"


def w_length_prefix(f: Files, rng: random.Random, resealed: bool) -> str:
    raw = f.read(WEIGHTS)
    (n,) = struct.unpack("<Q", raw[:8])
    value = rng.choice(
        [
            0,
            1,
            n - rng.randrange(1, 9),
            n + rng.randrange(1, 9),
            len(raw),
            2**63,
            rng.getrandbits(64),
        ]
    )
    f.write(WEIGHTS, struct.pack("<Q", max(0, value)) + raw[8:])
    return f"header length {n} -> {value}"


def w_header_bytes(f: Files, rng: random.Random, resealed: bool) -> str:
    raw = bytearray(f.read(WEIGHTS))
    (n,) = struct.unpack("<Q", raw[:8])
    where = []
    for _ in range(rng.randrange(1, 5)):
        i = rng.randrange(8, 8 + n)
        raw[i] = rng.choice([rng.randrange(256), ord(rng.choice('{}[]",:0123456789 FIUB'))])
        where.append(i)
    f.write(WEIGHTS, bytes(raw))
    return f"header bytes {where} overwritten"


def w_dtype(f: Files, rng: random.Random, resealed: bool) -> str:
    items, n, data = f.header()
    name, entry = rng.choice(f.tensors(items))
    new = rng.choice([d for d in [*ITEM_BYTES, "F31", "", "f32", 7, None] if d != entry["dtype"]])
    entry["dtype"] = new
    f.write_header(items, data, pad_to=n)
    return f"{name} dtype -> {new!r}"


def w_shape(f: Files, rng: random.Random, resealed: bool) -> str:
    items, n, data = f.header()
    name, entry = rng.choice(f.tensors(items))
    shape = list(entry["shape"])
    how = rng.choice(
        ["grow", "shrink", "transpose", "append1", "drop", "negative", "type", "empty"]
    )
    i = rng.randrange(len(shape))
    if how == "grow":
        shape[i] += rng.choice([1, 2, shape[i]])
    elif how == "shrink":
        shape[i] = max(0, shape[i] - rng.choice([1, 2, max(1, shape[i] // 2)]))
    elif how == "transpose" and len(shape) == 2 and shape[0] != shape[1]:
        shape = shape[::-1]
    elif how in ("transpose", "append1"):
        shape.append(1)  # same bytes, another shape
    elif how == "drop":
        shape.pop(i)
    elif how == "negative":
        shape[i] = -shape[i]
    elif how == "type":
        shape[i] = rng.choice([str(shape[i]), float(shape[i]) + 0.5, None, True])
    else:
        shape = rng.choice([[], "shape", None])
    entry["shape"] = shape
    f.write_header(items, data, pad_to=n)
    return f"{name} shape -> {shape!r} ({how})"


def w_offsets(f: Files, rng: random.Random, resealed: bool) -> str:
    items, n, data = f.header()
    tensors = f.tensors(items)
    k = rng.randrange(len(tensors))
    name, entry = tensors[k]
    start, end = entry["data_offsets"]
    how = rng.choice(["start", "end", "both", "overlap", "reverse", "type", "past_end"])
    if how == "start":
        entry["data_offsets"] = [max(0, start + rng.choice([-8, -1, 1, 8])), end]
    elif how == "end":
        entry["data_offsets"] = [start, max(0, end + rng.choice([-8, -1, 1, 8]))]
    elif how == "both":
        d = rng.choice([-2, -1, 1, 2, 4]) * 2
        entry["data_offsets"] = [max(0, start + d), max(0, end + d)]
    elif how == "overlap":
        other = tensors[k - 1][1] if k else tensors[-1][1]
        shift = other["data_offsets"][0] - start
        entry["data_offsets"] = [start + shift, end + shift]
    elif how == "reverse":
        entry["data_offsets"] = [end, start]
    elif how == "type":
        entry["data_offsets"] = rng.choice(
            [[start], [start, end, end], [str(start), end], None, [start, float(end)]]
        )
    else:
        entry["data_offsets"] = [start + len(data), end + len(data)]
    f.write_header(items, data, pad_to=n)
    return f"{name} data_offsets {[start, end]} -> {entry['data_offsets']!r} ({how})"


def w_drop_entry(f: Files, rng: random.Random, resealed: bool) -> str:
    items, n, data = f.header()
    item = rng.choice(f.tensors(items))
    items.remove(item)
    f.write_header(items, data, pad_to=n)
    return f"{item[0]} left out of the header (its bytes stay)"


def w_drop_tensor(f: Files, rng: random.Random, resealed: bool) -> str:
    items, _, data = f.header()
    names = [t[0] for t in f.tensors(items)]
    name = "model.norm.weight" if rng.random() < 0.3 else rng.choice(names)
    f.write_header(items, _relayout(items, data, drop=name))
    return f"{name} removed with its bytes (a well-formed file without it)"


def w_rename(f: Files, rng: random.Random, resealed: bool) -> str:
    items, n, data = f.header()
    tensors = f.tensors(items)
    item = rng.choice(tensors)
    old = item[0]
    how = rng.choice(["existing", "suffix", "layer", "char", "empty"])
    if how == "existing":
        item[0] = rng.choice([t[0] for t in tensors if t[0] != old])  # a duplicate key
    elif how == "suffix":
        item[0] = old + rng.choice([".x", "_", ".weight", " "])
    elif how == "layer" and ".layers." in old:
        item[0] = old.replace(".layers.", ".layers.9", 1)
    elif how == "empty":
        item[0] = ""
    else:
        i = rng.randrange(len(old))
        item[0] = old[:i] + rng.choice("abcxyz019._") + old[i + 1 :]
    f.write_header(items, data, pad_to=n)
    return f"{old} renamed {item[0]!r} ({how})"


def w_add_tensor(f: Files, rng: random.Random, resealed: bool) -> str:
    items, _, data = f.header()
    name = rng.choice(
        [
            "lm_head.weight",
            "model.extra.weight",
            "model.layers.0.mlp.gate_proj.bias",
            "model.layers.7.input_layernorm.weight",
            "model.embed_tokens.weight",
            "model.embed_tokens.qweight",
        ]
    )
    if any(t[0] == name for t in items):
        name += ".extra"
    count = rng.choice([1, 16, 64])
    dtype = rng.choice(["F32", "BF16", "I8"])
    blob = rng.randbytes(count * ITEM_BYTES[dtype])
    data = _relayout(items, data, extra=blob)
    items.append(
        [
            name,
            {"dtype": dtype, "shape": [count], "data_offsets": [len(data) - len(blob), len(data)]},
        ]
    )
    f.write_header(items, data)
    return f"extra tensor {name} ({dtype} [{count}])"


def w_resize_tensor(f: Files, rng: random.Random, resealed: bool) -> str:
    """A well-formed file whose tensor has other dims than the config's (more/fewer rows)."""
    items, _, data = f.header()
    name, entry = rng.choice([t for t in f.tensors(items) if t[1]["shape"]])
    row = _entry_bytes(entry) // max(1, entry["shape"][0])
    rows = rng.choice([1, 2, 7]) * rng.choice([1, -1])
    rows = max(-entry["shape"][0] + 1, rows)
    out, at = b"", 0
    for other, e in f.tensors(items):
        start, end = e["data_offsets"]
        chunk = data[start:end]
        if other == name:
            chunk = (
                chunk[: row * (e["shape"][0] + rows)]
                if rows < 0
                else chunk + rng.randbytes(row * rows)
            )
            e["shape"] = [e["shape"][0] + rows, *e["shape"][1:]]
        e["data_offsets"] = [at, at + len(chunk)]
        at += len(chunk)
        out += chunk
    f.write_header(items, out)
    return f"{name} resized by {rows} rows to {entry['shape']}"


def w_metadata(f: Files, rng: random.Random, resealed: bool) -> str:
    items, n, data = f.header()
    meta = next((it for it in items if it[0] == "__metadata__"), None)
    if meta is None:
        meta = ["__metadata__", {}]
        items.insert(0, meta)
    how = rng.choice(["value", "value", "type", "nonstring"])
    if how == "value":
        meta[1] = {
            **meta[1],
            "producer": rng.choice(["someone", "", "pocketlm "]),
            "note": "x" * rng.randrange(3),
        }
    elif how == "type":
        meta[1] = rng.choice([[], "pt", 3, None])
    else:
        meta[1] = {**meta[1], "format": rng.choice([1, None, ["pt"]])}
    f.write_header(items, data, pad_to=n)
    return f"__metadata__ -> {meta[1]!r}"


def w_entry_key(f: Files, rng: random.Random, resealed: bool) -> str:
    items, n, data = f.header()
    name, entry = rng.choice(f.tensors(items))
    if rng.random() < 0.5:
        entry["extra"] = 1
        what = "extra key"
    else:
        del entry[rng.choice(["dtype", "shape", "data_offsets"])]
        what = "a key removed"
    f.write_header(items, data, pad_to=n)
    return f"{name}: {what}"


def w_reformat(f: Files, rng: random.Random, resealed: bool) -> str:
    """Meaning kept: other whitespace and key order in the header (the file may keep its size)."""
    items, n, data = f.header()
    rng.shuffle(items)
    text = json.dumps(
        dict(items), indent=rng.choice([None, 1]), separators=rng.choice([(",", ":"), (", ", ": ")])
    )
    f.write_header(items, data, pad_to=n, text=text)
    return "header reformatted and reordered"
