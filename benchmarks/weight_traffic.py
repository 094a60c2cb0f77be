"""Weight bytes one decode token reads, from the files an engine runs, for the "GB/s of weights"
and "% of measured read bandwidth" columns of infer_speed.py.

What is counted: every stored tensor's bytes (weights, int8/int4 scales, norms, biases) once per
token, except
- the token embedding: one row per token for the lookup; when there is no separate LM head
  (tied embeddings) the whole table counts once more, as the head reads it all;
- a separate LM head (`lm_head.*`, GGUF `output.*`): all of it;
- experts of a mixture (`.experts.{e}.`, GGUF `*_exps`): k/n of their bytes (a token runs k of the
  n experts of each layer; shared experts and routers count whole).
Not counted: the KV cache, activations, the logits. Sizes come from file headers only.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Mapping
from pathlib import Path

_ITEMSIZE = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
}
_EMBEDDING = ("model.embed_tokens.", "token_embd.")
_HEAD = ("lm_head.", "output.")
_EXPERT = re.compile(r"\.experts\.\d+\.|_exps\.")


def safetensors_sizes(directory: Path, itemsize: int | None = None) -> dict[str, int]:
    """Bytes of every tensor in `directory`'s *.safetensors headers; `itemsize` re-prices each
    element (e.g. 4: a bf16 file that transformers runs in fp32)."""
    sizes: dict[str, int] = {}
    for path in sorted(directory.glob("*.safetensors")):
        with open(path, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        for name, info in header.items():
            if name == "__metadata__":
                continue
            begin, end = info["data_offsets"]
            if itemsize is None:
                sizes[name] = end - begin
            else:
                sizes[name] = (end - begin) // _ITEMSIZE[info["dtype"]] * itemsize
    return sizes


def gguf_sizes(path: Path) -> dict[str, int]:
    """Bytes of every tensor in a .gguf file (gguf-py's reader: header and tensor infos only)."""
    from gguf import GGUFReader

    return {t.name: int(t.n_bytes) for t in GGUFReader(str(path)).tensors}


def bytes_per_token(
    sizes: Mapping[str, int], vocab_size: int, n_experts: int = 0, experts_per_token: int = 0
) -> int:
    """Weight bytes one decode token reads (the rules in the module docstring)."""
    tied = not any(name.startswith(_HEAD) for name in sizes)
    total = 0.0
    for name, nbytes in sizes.items():
        if name.startswith(_EMBEDDING):
            total += nbytes / vocab_size + (nbytes if tied else 0)
        elif n_experts and _EXPERT.search(name):
            total += nbytes * experts_per_token / n_experts
        else:
            total += nbytes
    return round(total)


def weight_gbs(
    bytes_token: int, tokens_per_s: float, read_gbs: float | None
) -> tuple[float, float | None]:
    """(GB/s of weights the decode rate implies, its % of the measured read bandwidth or None)."""
    gbs = bytes_token * tokens_per_s / 1e9
    return gbs, (100 * gbs / read_gbs if read_gbs else None)
