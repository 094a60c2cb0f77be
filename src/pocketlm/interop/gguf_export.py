"""`pocketlm export gguf`: one .gguf file that llama.cpp and Ollama run unchanged, plus a Modelfile.

Architecture `llama`; the byte-level BPE tokenizer is written as `gpt2` with the pre-tokenizer
declared as `gpt-2` (a freshly trained vocabulary has no hash llama.cpp's converter knows, so the
type is stated rather than guessed); special tokens, the chat template and the end-of-turn token
go into the metadata. Q/K projection rows are permuted from the rotate-half RoPE layout (HF,
PocketLM) to llama.cpp's interleaved pairs. int4 models export to Q4_0 bit for bit (same block
layout); everything else is converted from the weights the model computes with. Tensor names come
from the llama family's spec (interop/families), the table import and HF export use too; models
with family options (imported Gemma, Phi, ...) are refused for now, naming the options.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pocketlm.checkpoint.model_io import load_model, read_quantization
from pocketlm.common.errors import ArtifactError, ConfigError, require
from pocketlm.common.hashing import sha256_file
from pocketlm.common.manifest import parent_ref, write_json_atomic
from pocketlm.interop.families.llama import LLAMA
from pocketlm.interop.open_model import model_dir as resolve_model
from pocketlm.model.quantized import QuantizedEmbedding, QuantizedLinear
from pocketlm.tokenizer.chat_template import CHAT_TEMPLATE

GGUF_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0")

OLLAMA_TEMPLATE = """{{- if .System }}<|system|>
{{ .System }}<|end|>
{{ end }}{{- range .Messages }}<|{{ .Role }}|>
{{ .Content }}<|end|>
{{ end }}<|assistant|>
"""


def rope_permute(rows: np.ndarray, n_heads: int) -> np.ndarray:
    """Reorder rows of a q/k projection (heads*head_dim, ...) from rotate-half to interleaved RoPE."""
    head_dim = rows.shape[0] // n_heads
    shape = rows.shape
    return (
        rows.reshape(n_heads, 2, head_dim // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)
    )  # (H, hd/2, 2, ...)


def _float_weight(module: torch.nn.Module) -> np.ndarray:
    if isinstance(module, QuantizedLinear):
        return module.dequantized().numpy()
    if isinstance(module, QuantizedEmbedding):
        from pocketlm.model.quantized import QuantizedEmbeddingView

        return QuantizedEmbeddingView(module).dequantized().numpy()
    return module.weight.detach().float().numpy()


def _q4_0_blocks(module: torch.nn.Module, n_heads: int | None) -> np.ndarray | None:
    """Raw Q4_0 bytes (rows, cols/32*18) straight from an int4 module's blocks, or None."""
    if not isinstance(module, QuantizedLinear | QuantizedEmbedding) or module.scheme != "int4":
        return None
    q = module.qweight.numpy()  # (rows, cols/2) uint8, 16 bytes per 32-value block
    d = module.scales.numpy()  # (rows, cols/group) float16
    rows = q.shape[0]
    blocks = q.shape[1] // 16
    per_group = module.group // 32
    d_blocks = (
        np.repeat(d, per_group, axis=1).view(np.uint8).reshape(rows, blocks, 2)
    )  # fp16 d per block
    out = np.concatenate([d_blocks, q.reshape(rows, blocks, 16)], axis=2).reshape(rows, blocks * 18)
    return rope_permute(out, n_heads) if n_heads else out


def export_gguf(
    model_dir: str | Path,
    out: str | Path,
    *,
    out_type: str = "f32",
    command: Sequence[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write `out` (.gguf), `<stem>.Modelfile` beside it and `<out>.manifest.json`; returns `out`."""
    gguf = require("gguf", "gguf", "GGUF export")
    if out_type not in GGUF_TYPES:
        raise ConfigError(f"--type must be one of {', '.join(GGUF_TYPES)}, got {out_type!r}")
    out = Path(out)
    if out.exists() and not overwrite:
        raise ArtifactError(f"{out} already exists; choose another --out or pass --overwrite")
    loaded = load_model(resolve_model(model_dir))
    c, tok, model = loaded.config, loaded.tokenizer, loaded.model
    if c.family_features():
        raise ArtifactError(
            f"GGUF export writes the llama architecture without family options; this model has "
            f"{', '.join(c.family_features())}: export it with `pocketlm export hf`"
        )
    quant = read_quantization(loaded.directory)["scheme"]
    qtype = {
        "f32": gguf.GGMLQuantizationType.F32,
        "f16": gguf.GGMLQuantizationType.F16,
        "bf16": gguf.GGMLQuantizationType.BF16,
        "q8_0": gguf.GGMLQuantizationType.Q8_0,
        "q4_0": gguf.GGMLQuantizationType.Q4_0,
    }[out_type]
    if out_type in ("q8_0", "q4_0"):
        bad = sorted({d for d in (c.dim, c.q_dim, c.resolved_ffn_dim) if d % 32})
        if bad:
            raise ArtifactError(
                f"{out_type} needs rows that are multiples of 32; this model has {bad}"
            )

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    writer = gguf.GGUFWriter(str(tmp), "llama")
    name = (
        loaded.directory.parent.name if loaded.directory.name == "model" else loaded.directory.name
    )
    writer.add_name(f"pocketlm-{name}")
    writer.add_context_length(c.max_seq_len)
    writer.add_embedding_length(c.dim)
    writer.add_block_count(c.n_layers)
    writer.add_feed_forward_length(c.resolved_ffn_dim)
    writer.add_head_count(c.n_heads)
    writer.add_head_count_kv(c.n_kv_heads)
    writer.add_rope_dimension_count(c.resolved_head_dim)
    writer.add_rope_freq_base(c.rope_theta)
    writer.add_layer_norm_rms_eps(c.norm_eps)
    writer.add_key_length(c.resolved_head_dim)
    writer.add_value_length(c.resolved_head_dim)
    writer.add_vocab_size(c.vocab_size)
    file_type = {"f32": 0, "f16": 1, "bf16": 32, "q8_0": 7, "q4_0": 2}[out_type]
    writer.add_file_type(file_type)
    _add_tokenizer(writer, gguf, tok, c.vocab_size, loaded.directory)

    def add(gguf_name: str, module: torch.nn.Module, heads: int | None = None) -> None:
        if out_type == "q4_0":
            raw = _q4_0_blocks(module, heads)
            if raw is not None:  # int4 model -> Q4_0: the stored blocks, bit for bit
                writer.add_tensor(
                    gguf_name, raw, raw_dtype=qtype
                )  # byte shape in, logical shape derived
                return
        w = _float_weight(module).astype(np.float32)
        if heads:
            w = rope_permute(w, heads)
        if qtype in (gguf.GGMLQuantizationType.F32,):
            writer.add_tensor(gguf_name, w)
        elif qtype == gguf.GGMLQuantizationType.F16:
            writer.add_tensor(gguf_name, w.astype(np.float16))
        else:
            data = gguf.quants.quantize(w, qtype)
            writer.add_tensor(gguf_name, data, raw_dtype=qtype)

    def add_norm(gguf_name: str, weight: torch.Tensor) -> None:
        writer.add_tensor(gguf_name, weight.detach().float().numpy())

    heads = {"self_attn.q_proj": c.n_heads, "self_attn.k_proj": c.n_kv_heads}
    for gguf_name, (ours,) in LLAMA.gguf_names.plan(c):
        module = model.get_submodule(ours.removesuffix(".weight"))
        if "norm" in ours:
            add_norm(gguf_name, module.weight)
        else:
            add(gguf_name, module, heads.get(ours.split(".", 3)[-1].removesuffix(".weight")))
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    # One Modelfile per GGUF file (model.gguf -> model.Modelfile): a second export into the same
    # folder must not overwrite the first one's.
    modelfile_path(out).write_text(_modelfile(out), encoding="utf-8")
    manifest = {
        "kind": "gguf",
        "schema": 1,
        "file": out.name,
        "type": out_type,
        "source_quantization": quant,
        "parents": [parent_ref(loaded.directory)],
        "command": list(command) if command else None,
        "bytes": out.stat().st_size,
        "sha256": sha256_file(out),
    }
    write_json_atomic(out.with_name(out.name + ".manifest.json"), manifest)
    return out


def _add_tokenizer(writer: Any, gguf: Any, tok: Any, vocab_size: int, directory: Path) -> None:
    data = json.loads((directory / "tokenizer.json").read_text(encoding="utf-8"))
    merges = data["model"]["merges"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in merges]
    tokens, types = [], []
    for i in range(vocab_size):
        piece = tok.backend.id_to_token(i) if i < tok.vocab_size else None
        if piece is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(piece)
            types.append(gguf.TokenType.CONTROL if i in tok.special_ids else gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tok.bos_id)
    writer.add_eos_token_id(tok.eos_id)
    writer.add_pad_token_id(tok.pad_id)
    writer.add_eot_token_id(tok.end_of_turn_id)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)


def modelfile_path(gguf: Path) -> Path:
    """The Ollama Modelfile written beside a GGUF file: model.gguf -> model.Modelfile."""
    return gguf.with_name(gguf.stem + ".Modelfile")


def _modelfile(gguf: Path) -> str:
    name = re.sub(r"[^a-z0-9._-]+", "-", gguf.stem.lower()) or "pocketlm"
    return (
        f"# Ollama: ollama create {name} -f {modelfile_path(gguf).name} && ollama run {name}\n"
        f"FROM ./{gguf.name}\n"
        f'TEMPLATE """{OLLAMA_TEMPLATE}"""\n'
        'PARAMETER stop "<|end|>"\n'
        'PARAMETER stop "<|endoftext|>"\n'
    )
