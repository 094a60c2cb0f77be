"""Corrupted variants of a model directory for the loader fuzz test (test_loader_fuzz.py).

`make_variant(base, out, seed, index)` copies a model directory (hard links for files it leaves
alone) and applies ONE mutation drawn from MUTATIONS with its own random parameters: a truncated
or padded file, header bytes overwritten, a tensor's dtype, shape or byte range changed, a tensor
dropped, renamed, added or resized, config and quantization values edited, tokenizer files broken,
the manifest edited, files deleted or replaced. The same (seed, index) always gives the same
variant, so a failure can be rebuilt from its number.

Two modes. "raw": the files change under the manifest, as a disk error, a bad copy or a hand
edit does; any mutation is fair (the manifest's sizes and hashes catch what the structure does
not). "resealed": the manifest is rewritten to the changed files, as a tool that rewrote them
would; only mutations that break an invariant, or keep the model's meaning exactly, are drawn
here, so an accepted variant must give the original's logits. Mutations that make a legal but
different model (another rope_theta, a changed tokenizer merge) are raw-only, and so are
changes to the weights' data bytes, which no loader checks without hashing the whole file.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass
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
ITEM_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2, "I32": 4}
ITEM_BYTES |= {"U32": 4, "F32": 4, "F64": 8, "I64": 8, "U64": 8, "F8_E5M2": 1, "F8_E4M3": 1}
# Config fields that tensors pin down (any change is caught or changes nothing), and fields that
# change a model's outputs legally (only raw mode may edit them: the manifest hash catches it).
BOUND_FIELDS = ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "ffn_dim", "head_dim")
FREE_FIELDS = ("rope_theta", "norm_eps")
INERT_FIELDS = ("init_std", "dropout", "max_seq_len")  # no effect on a short forward pass
BOOL_FIELDS = ("tie_embeddings", "qkv_bias")
BAD_VALUES: list[Any] = [-1, 0, -(2**40), 2**40, 2**63, 1.5, "64", None, True, [], {}, "NaN"]


@dataclass(frozen=True)
class Variant:
    """One corrupted copy of a base model directory."""

    path: Path
    base: str
    kind: str
    detail: str
    resealed: bool


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


# ---- weights ---------------------------------------------------------------------------------
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


# ---- config ------------------------------------------------------------------------------------
def _bad_or(rng: random.Random, legal: list[Any]) -> Any:
    return rng.choice(BAD_VALUES) if rng.random() < 0.5 or not legal else rng.choice(legal)


def c_field(f: Files, rng: random.Random, resealed: bool) -> str:
    config = f.json(CONFIG)
    fields = [*BOUND_FIELDS, *BOOL_FIELDS, *INERT_FIELDS, *(() if resealed else FREE_FIELDS)]
    field = rng.choice(fields)
    old = config[field]
    if field in BOUND_FIELDS:
        value = _bad_or(
            rng, [old + rng.choice([-2, -1, 1, 2]), old * 2, rng.randrange(1, 1025), old // 2 or 1]
        )
    elif field in BOOL_FIELDS:
        value = _bad_or(rng, [not old])
    elif field == "max_seq_len":
        value = _bad_or(rng, [rng.randrange(21, 4097), 2**20 + 1])
    elif field == "dropout":
        value = _bad_or(rng, [0.1, 0.5, 1.0, -0.1])
    elif field == "init_std":
        value = _bad_or(rng, [0.1, 1.0, -1.0, math.inf])
    else:  # free: raw mode only
        value = _bad_or(rng, [old * rng.choice([0.5, 2.0]), -old, 0.0])
    if value == "NaN":
        text = json.dumps(config).replace(
            json.dumps(field) + ": " + json.dumps(old), json.dumps(field) + ": NaN"
        )
        f.write(CONFIG, text.encode())
    else:
        config[field] = value
        f.write_json(CONFIG, config)
    return f"{field} {old!r} -> {value!r}"


def c_vocab(f: Files, rng: random.Random, resealed: bool) -> str:
    """The issue's case: the config claims another vocabulary than the tensors hold."""
    config = f.json(CONFIG)
    old = config["vocab_size"]
    config["vocab_size"] = rng.choice([old + 1, old + 64, old * 2, 100_000, old - 1, old // 2, 300])
    f.write_json(CONFIG, config)
    return f"vocab_size {old} -> {config['vocab_size']}"


def c_keys(f: Files, rng: random.Random, resealed: bool) -> str:
    config = f.json(CONFIG)
    if rng.random() < 0.5:
        key = rng.choice(list(config))
        del config[key]
        what = f"{key} removed (its default applies)"
    else:
        config[rng.choice(["vocab", "layers", "rope_scaling", "hidden_size"])] = 1
        what = "unknown key added"
    f.write_json(CONFIG, config)
    return what


def _broken_json(f: Files, rng: random.Random, name: str) -> str:
    raw = f.read(name)
    how = rng.choice(["truncate", "garbage", "list", "empty", "deep", "utf8", "string"])
    data = {
        "truncate": raw[: rng.randrange(len(raw))],
        "garbage": rng.randbytes(rng.randrange(1, 64)),
        "list": b"[1, 2, 3]",
        "empty": b"",
        "deep": b"[" * 100_000 + b"]" * 100_000,
        "utf8": raw[:10] + b"\xff\xfe" + raw[10:],
        "string": b'"a string"',
    }[how]
    f.write(name, data)
    return f"{name}: {how}"


def c_broken(f: Files, rng: random.Random, resealed: bool) -> str:
    return _broken_json(f, rng, CONFIG)


def c_reformat(f: Files, rng: random.Random, resealed: bool) -> str:
    config = f.json(CONFIG)
    items = list(config.items())
    rng.shuffle(items)
    f.write_json(CONFIG, dict(items), indent=rng.choice([None, 1, 4]))
    return "config reformatted and reordered"


def any_bytes(name: str) -> Callable[[Files, random.Random, bool], str]:
    """Random bytes overwritten in a small file: may make a legal but different file (raw only)."""

    def mutate(f: Files, rng: random.Random, resealed: bool) -> str:
        raw = bytearray(f.read(name))
        where = [rng.randrange(len(raw)) for _ in range(rng.randrange(1, 4))]
        for i in where:
            raw[i] = rng.randrange(256)
        f.write(name, bytes(raw))
        return f"{name}: bytes {where} overwritten"

    mutate.__name__ = f"bytes_{name}"
    return mutate


# ---- quantization.json ---------------------------------------------------------------------------
def q_edit(f: Files, rng: random.Random, resealed: bool) -> str:
    quant = f.json(QUANT)
    key = rng.choice(["scheme", "group_size", "source", "unknown"])
    if key == "scheme":
        value = rng.choice(["none", "bf16", "int8", "int4", "int3", "", None, 8, ["int8"]])
    elif key == "group_size":
        value = rng.choice([None, 0, 16, 31, 32, 33, 64, 128, -32, "32", 1.5, True, 2**40])
    elif key == "source":
        value = rng.choice(["/elsewhere", "", None])
    else:
        key, value = rng.choice(["bits", "zero_point", "calibration"]), 4
    quant[key] = value
    f.write_json(QUANT, quant)
    return f"quantization {key} -> {value!r}"


def q_broken(f: Files, rng: random.Random, resealed: bool) -> str:
    return _broken_json(f, rng, QUANT)


def q_remove(f: Files, rng: random.Random, resealed: bool) -> str:
    remove(f.path / QUANT)
    return "quantization.json deleted"


def q_add(f: Files, rng: random.Random, resealed: bool) -> str:
    scheme = rng.choice(["none", "bf16", "int8", "int4"])
    f.write_json(QUANT, {"scheme": scheme, "group_size": 32})
    return f"quantization.json added to a float model (scheme {scheme})"


def q_reformat(f: Files, rng: random.Random, resealed: bool) -> str:
    f.write_json(QUANT, f.json(QUANT), indent=rng.choice([None, 3]))
    return "quantization.json reformatted"


# ---- tokenizer files ---------------------------------------------------------------------------
def t_broken(f: Files, rng: random.Random, resealed: bool) -> str:
    return _broken_json(f, rng, rng.choice([TOKENIZER, *SIDE_FILES]))


def t_invalid(f: Files, rng: random.Random, resealed: bool) -> str:
    """A tokenizer.json that parses as JSON but is not a usable tokenizer for this model."""
    tok = f.json(TOKENIZER)
    vocab = tok["model"]["vocab"]
    how = rng.choice(
        ["special", "big_id", "merge", "precompiled", "regex", "type", "model", "vocab"]
    )
    if how == "special":
        special = rng.choice(tok["added_tokens"])
        tok["added_tokens"].remove(special)
        vocab.pop(special["content"], None)
    elif how == "big_id":
        token = rng.choice(list(vocab))
        vocab[token] = rng.choice([512, 513, 600, 70_000, 2**31 - 1])
    elif how == "merge":
        tok["model"]["merges"].insert(
            rng.randrange(len(tok["model"]["merges"]) + 1), ["zzq", "qqz"]
        )
    elif how == "precompiled":  # the tokenizers library panics on this one
        tok["normalizer"] = {"type": "Precompiled", "precompiled_charsmap": "AAAA"}
    elif how == "regex":
        tok["pre_tokenizer"] = {
            "type": "Split",
            "pattern": {"Regex": "(("},
            "behavior": "Isolated",
            "invert": False,
        }
    elif how == "type":
        tok["model"]["type"] = rng.choice(["WordPiece", None, 3])
    elif how == "model":
        del tok["model"]
    else:
        tok["model"]["vocab"] = rng.choice([{}, [], None])
    f.write_json(TOKENIZER, tok)
    return f"tokenizer.json: {how}"


def t_reformat(f: Files, rng: random.Random, resealed: bool) -> str:
    name = rng.choice([TOKENIZER, *SIDE_FILES])
    f.write_json(name, f.json(name), indent=rng.choice([None, 1]))
    return f"{name} reformatted"


def t_remove_side(f: Files, rng: random.Random, resealed: bool) -> str:
    name = rng.choice(SIDE_FILES)
    remove(f.path / name)
    return f"{name} deleted"


# ---- manifest (never resealed: it is the seal) -------------------------------------------------
def m_edit(f: Files, rng: random.Random, resealed: bool) -> str:
    m = f.json(MANIFEST)
    files = m["files"]
    name = rng.choice(list(files))
    how = rng.choice(
        [
            "kind",
            "schema",
            "drop",
            "bytes",
            "sha",
            "bytes_type",
            "files_type",
            "entry_type",
            "harmless",
            "harmless",
        ]
    )
    if how == "kind":
        m["kind"] = rng.choice(["tokens", "adapter", "", None, 3, ["model"]])
    elif how == "schema":
        m["schema"] = rng.choice([0, 2, 99, "1", None, 1.5, True])
    elif how == "drop":
        del files[name]
    elif how == "bytes":
        files[name]["bytes"] += rng.choice([-1, 1, 4096])
    elif how == "sha":
        files[name]["sha256"] = hashlib.sha256(rng.randbytes(8)).hexdigest()
    elif how == "bytes_type":
        files[name]["bytes"] = rng.choice([str(files[name]["bytes"]), None, -1, True, 1.5])
    elif how == "files_type":
        m["files"] = rng.choice([[], "x", None])
    elif how == "entry_type":
        files[name] = rng.choice([None, 3, [], {"sha256": files[name]["sha256"]}])
    else:
        m[rng.choice(["created_at", "command", "summary", "config"])] = rng.choice(
            ["x", None, {"a": 1}]
        )
    f.write_json(MANIFEST, m)
    return f"manifest {how} ({name})"


def m_broken(f: Files, rng: random.Random, resealed: bool) -> str:
    return _broken_json(f, rng, MANIFEST)


# ---- whole files -------------------------------------------------------------------------------
def f_replace(f: Files, rng: random.Random, resealed: bool) -> str:
    name = rng.choice([WEIGHTS, CONFIG, TOKENIZER, MANIFEST, *SIDE_FILES])
    target = f.path / name
    remove(target)
    how = rng.choice(["delete", "directory", "fifo", "dev_zero", "dangling"])
    if how == "directory":
        target.mkdir()
    elif how == "fifo":  # opening it for reading would block forever: a hang, if anything reads it
        os.mkfifo(target)
    elif how == "dev_zero":  # reading it never ends
        target.symlink_to("/dev/zero")
    elif how == "dangling":
        target.symlink_to(f.path / "nowhere")
    return f"{name}: {how}"


def f_pickle(f: Files, rng: random.Random, resealed: bool) -> str:
    name = rng.choice(["pytorch_model.bin", "model.pt", "weights.pth", "x.ckpt"])
    f.write(name, b"\x80\x04" + rng.randbytes(16))
    return f"pickle file {name} added"


@dataclass(frozen=True)
class Mutation:
    fn: Callable[[Files, random.Random, bool], str]
    modes: tuple[str, ...] = ("raw", "resealed")
    needs: str = ""  # "quant": only bases with a quantization.json; "float": only those without


MUTATIONS = [
    Mutation(w_truncate),
    Mutation(w_append),
    Mutation(w_length_prefix),
    Mutation(w_header_bytes),
    Mutation(w_dtype),
    Mutation(w_shape),
    Mutation(w_offsets),
    Mutation(w_drop_entry),
    Mutation(w_drop_tensor),
    Mutation(w_rename),
    Mutation(w_add_tensor),
    Mutation(w_resize_tensor),
    Mutation(w_metadata),
    Mutation(w_entry_key),
    Mutation(w_reformat),
    Mutation(c_field),
    Mutation(c_vocab),
    Mutation(c_keys),
    Mutation(c_broken),
    Mutation(c_reformat),
    Mutation(any_bytes(CONFIG), modes=("raw",)),
    Mutation(q_edit, needs="quant"),
    Mutation(q_broken, needs="quant"),
    Mutation(q_remove, needs="quant"),
    Mutation(q_add, needs="float"),
    Mutation(q_reformat, needs="quant"),
    Mutation(any_bytes(QUANT), modes=("raw",), needs="quant"),
    Mutation(t_broken),
    Mutation(t_invalid),
    Mutation(t_reformat),
    Mutation(t_remove_side),
    Mutation(any_bytes(TOKENIZER), modes=("raw",)),
    Mutation(m_edit, modes=("raw",)),
    Mutation(m_broken, modes=("raw",)),
    Mutation(f_replace, modes=("raw",)),
    Mutation(f_pickle, modes=("raw",)),
]


def make_variant(bases: dict[str, Path], out: Path, seed: int, index: int) -> Variant:
    """Variant number `index` of the run with `seed`: a copy of one base with one mutation."""
    rng = random.Random(f"{seed}:{index}")
    mutation = rng.choice(MUTATIONS)
    mode = rng.choice(mutation.modes)
    fits = [
        b
        for b, p in sorted(bases.items())
        if mutation.needs == "" or (mutation.needs == "quant") == (p / QUANT).exists()
    ]
    base = rng.choice(fits)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for src in bases[base].iterdir():
        os.link(src, out / src.name)
    detail = mutation.fn(Files(out, rng), rng, mode == "resealed")
    if mode == "resealed":
        reseal(out)
    return Variant(out, base, mutation.fn.__name__, detail, mode == "resealed")


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
