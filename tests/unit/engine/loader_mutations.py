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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.unit.engine.variant_files import (
    CONFIG,
    MANIFEST,
    QUANT,
    SIDE_FILES,
    TOKENIZER,
    WEIGHTS,
    Files,
    remove,
    reseal,
)
from tests.unit.engine.weights_mutations import (
    w_add_tensor,
    w_append,
    w_drop_entry,
    w_drop_tensor,
    w_dtype,
    w_entry_key,
    w_header_bytes,
    w_length_prefix,
    w_metadata,
    w_offsets,
    w_reformat,
    w_rename,
    w_resize_tensor,
    w_shape,
    w_truncate,
)

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
