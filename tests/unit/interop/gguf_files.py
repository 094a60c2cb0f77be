"""Test helpers for GGUF export: tiny Hugging Face models of each family as llama.cpp can run them,
saved with a family tokenizer folder, and a reader for what a GGUF file holds."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from hf_families import build_hf_model

# llama.cpp's Gemma 2/3 scale queries by 1/sqrt(head_dim) whatever query_pre_attn_scalar says
# (the family tests use 24 with head_dim 16: export refuses those, test_gguf_families checks).
GGUF_READY = {
    "gemma2": {"query_pre_attn_scalar": 16},
    "gemma3": {"query_pre_attn_scalar": 16},
}
# ... and its llama, qwen2 and phi3 architectures have no sliding window (exported with a note):
# for parity the window goes.
PARITY = {
    **GGUF_READY,
    "mistral": {"sliding_window": None},
    "mixtral": {"sliding_window": None},
    "qwen2": {"use_sliding_window": False},
    "phi3": {"sliding_window": None},
}


def save_with_tokenizer(family: str, out: Path, tokenizer_dir: Path, **overrides) -> Path:
    """A tiny `family` model saved at `out` with every file of `tokenizer_dir` beside it."""
    model = build_hf_model(family, **{**GGUF_READY.get(family, {}), **overrides})
    model.save_pretrained(out)
    for f in Path(tokenizer_dir).iterdir():
        shutil.copyfile(f, out / f.name)
    return out


def read_gguf(path: Path) -> tuple[dict, dict]:
    """({key: value}, {tensor name: (type name, numpy shape (rows first), float32 values)})."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    fields = {name: _value(gguf, f) for name, f in reader.fields.items()}
    tensors = {}
    for t in reader.tensors:
        shape = tuple(int(x) for x in reversed(t.shape.tolist()))
        values = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
        tensors[t.name] = (t.tensor_type.name, shape, values.reshape(shape))
    return fields, tensors


def _value(gguf, field):
    types = field.types
    if not types:
        return None
    if types[0] == gguf.GGUFValueType.ARRAY:
        if types[-1] == gguf.GGUFValueType.STRING:
            return [bytes(field.parts[i]).decode("utf-8") for i in field.data]
        return [field.parts[i].tolist()[0] for i in field.data]
    if types[0] == gguf.GGUFValueType.STRING:
        return bytes(field.parts[field.data[0]]).decode("utf-8")
    return field.parts[field.data[0]].tolist()[0]
