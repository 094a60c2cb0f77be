"""`pocketlm export gguf`: one .gguf file that llama.cpp and Ollama run unchanged, plus a Modelfile.

The architecture is the model's family's in llama.cpp (FamilySpec.gguf: Llama, Mistral and
Mixtral are `llama`; Qwen2/3, their MoEs, Phi-2/3 and Gemma 1/2/3 have their own); PocketLM's own
models are `llama`. Before anything is written, gguf_metadata checks that llama.cpp's architecture
computes what the model computes, and refuses naming the option where it does not. Tensors are
named by the family's GGUF table (fused as llama.cpp wants them: Phi-3's attn_qkv and gate+up
ffn_up; each MoE layer's experts stacked into ffn_{gate,up,down}_exps [n_experts, rows, cols]).
Weights are the ones the model computes with, with llama.cpp's conventions folded in: the norm
offset (Gemma's 1 + w) added to the norm weights, q/k rows (and biases) permuted from rotate-half
to interleaved pairs for the `llama` architecture, Qwen2-MoE's shared-expert gate as a vector.
int4 models export to Q4_0 bit for bit (same block layout); everything else is converted. 1-D
tensors and MoE routers stay F32, as llama.cpp's converter keeps them; a matrix whose rows do not
split into blocks of 32 falls back to F16 in a q8_0/q4_0 file, as there. The tokenizer is written
by gguf_tokenizer (the model's own, or PocketLM's).
"""

from __future__ import annotations

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
from pocketlm.common.log import get_logger
from pocketlm.common.manifest import parent_ref, write_json_atomic
from pocketlm.interop.families import FamilySpec, family_named
from pocketlm.interop.families.llama import LLAMA
from pocketlm.interop.gguf_metadata import add_hyperparameters, llama_cpp_notes, rope_tensors
from pocketlm.interop.gguf_tokenizer import add_tokenizer
from pocketlm.interop.hf_export import import_source
from pocketlm.interop.open_model import model_dir as resolve_model
from pocketlm.model.config import ModelConfig
from pocketlm.model.norms import LayerNorm, RMSNorm
from pocketlm.model.quantized import QuantizedEmbedding, QuantizedEmbeddingView, QuantizedLinear

GGUF_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0")
_FILE_TYPES = {"f32": 0, "f16": 1, "bf16": 32, "q8_0": 7, "q4_0": 2}  # general.file_type
_F32_MATRICES = ("ffn_gate_inp.weight", "ffn_gate_inp_shexp.weight")  # routers stay float32
_log = get_logger("pocketlm.interop.gguf")

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


def gguf_family(directory: Path) -> FamilySpec:
    """The family whose llama.cpp architecture the model is written as: an imported model's own
    (found through its lineage, as `export hf` finds it), Llama for PocketLM's own models."""
    source = import_source(directory)
    spec = family_named(source["family"]) if source is not None else LLAMA
    if spec.gguf is None:
        raise ArtifactError(f"GGUF export: llama.cpp has no architecture for {spec.name} models")
    return spec


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
    directory = resolve_model(model_dir)
    loaded = load_model(directory)
    c, tok, model = loaded.config, loaded.tokenizer, loaded.model
    if c.labels:
        raise ArtifactError(
            f"{directory} is a classifier over {list(c.labels)}: GGUF files hold language models "
            "for llama.cpp; export it with `pocketlm export hf` (a *ForSequenceClassification)"
        )
    spec = gguf_family(loaded.directory)
    gspec = spec.gguf
    assert gspec is not None
    notes = llama_cpp_notes(gspec, c)
    quant = read_quantization(loaded.directory)["scheme"]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        notes += _write(gguf, tmp, spec, c, tok, model, loaded.directory, out_type)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    for note in notes:
        _log.warning("%s: %s", out.name, note)
    # One Modelfile per GGUF file (model.gguf -> model.Modelfile): a second export into the same
    # folder must not overwrite the first one's.
    modelfile_path(out).write_text(_modelfile(out, tok), encoding="utf-8")
    manifest = {
        "kind": "gguf",
        "schema": 1,
        "file": out.name,
        "type": out_type,
        "architecture": gspec.arch,
        "family": spec.name,
        "source_quantization": quant,
        "llama_cpp_notes": notes,
        "parents": [parent_ref(loaded.directory)],
        "command": list(command) if command else None,
        "bytes": out.stat().st_size,
        "sha256": sha256_file(out),
    }
    write_json_atomic(out.with_name(out.name + ".manifest.json"), manifest)
    return out


def _write(
    gguf: Any,
    path: Path,
    spec: FamilySpec,
    c: ModelConfig,
    tok: Any,
    model: torch.nn.Module,
    directory: Path,
    out_type: str,
) -> list[str]:
    """Write the GGUF file at `path`; returns notes on what llama.cpp will do differently."""
    gspec = spec.gguf
    assert gspec is not None
    qtype = getattr(gguf.GGMLQuantizationType, out_type.upper())
    writer = gguf.GGUFWriter(str(path), gspec.arch)
    name = directory.parent.name if directory.name == "model" else directory.name
    writer.add_name(general_name(f"pocketlm-{name}", spec, tok))
    writer.add_file_type(_FILE_TYPES[out_type])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    add_hyperparameters(writer, gspec, c)
    notes = add_tokenizer(writer, gguf, tok, c.vocab_size, directory)
    fallbacks: list[str] = []

    def add(gguf_name: str, data: np.ndarray, raw: bool = False) -> None:
        if raw:  # int4 model -> Q4_0: the stored blocks, bit for bit
            writer.add_tensor(gguf_name, data, raw_dtype=qtype)  # byte shape in, logical derived
        elif data.ndim == 1 or gguf_name.endswith(_F32_MATRICES) or out_type == "f32":
            writer.add_tensor(gguf_name, data.astype(np.float32))
        elif out_type == "f16" or (out_type in ("q8_0", "q4_0") and data.shape[-1] % 32):
            if out_type != "f16":
                fallbacks.append(gguf_name)
            writer.add_tensor(gguf_name, data.astype(np.float16))
        else:
            writer.add_tensor(gguf_name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)

    heads = {"self_attn.q_proj": c.n_heads, "self_attn.k_proj": c.n_kv_heads}
    for gguf_name, group in gspec.names.plan(c):
        permute = [heads.get(_inner(n)) if gspec.interleaved_rope else None for n in group]
        data, raw = _tensor(model, group, permute, c, out_type == "q4_0")
        add(gguf_name, data, raw)
        if gguf_name == "token_embd.weight" and c.tie_embeddings and gspec.head == "always":
            add("output.weight", data, raw)  # the architecture reads an output tensor: a copy
    for gguf_name, data in rope_tensors(c).items():
        add(gguf_name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    if fallbacks:
        notes.append(
            f"{len(fallbacks)} tensor(s) kept as F16: rows not in blocks of 32 (e.g. {fallbacks[0]})"
        )
    return notes


# llama.cpp gives these tokens Phi-3's rstrip rules when general.name says phi-3 / phi3, and fails
# to load a file whose vocabulary lacks one of them (llama-vocab.cpp, "set attributes by name").
_PHI3_NAMED = ("</s>", "<unk>", "<s>", "<|endoftext|>")


def general_name(name: str, spec: FamilySpec, tok: Any) -> str:
    """general.name: `name`, with "phi3" in it exactly when the model is a Phi-3 whose vocabulary
    has the tokens llama.cpp then looks up (the rstrip of its chat tokens, as transformers')."""
    has_tokens = all(tok.backend.token_to_id(t) is not None for t in _PHI3_NAMED)
    if not has_tokens:
        return re.sub(r"phi-?3", "phi_3", name, flags=re.IGNORECASE)
    if spec.name == "phi3" and not re.search(r"phi-?3", name, flags=re.IGNORECASE):
        return f"{name} (phi3)"
    return name


def _inner(name: str) -> str:
    """model.layers.3.self_attn.q_proj.weight -> self_attn.q_proj (the module inside its layer)."""
    return name.split(".", 3)[-1].rsplit(".", 1)[0]


def _tensor(
    model: torch.nn.Module,
    group: tuple[str, ...],
    permute: list[int | None],
    config: ModelConfig,
    want_q4: bool,
) -> tuple[np.ndarray, bool]:
    """(the GGUF tensor holding the PocketLM tensors `group`, whether it is raw Q4_0 bytes):
    experts stacked on a new first axis, fused matrices concatenated on rows."""
    modules = [model.get_submodule(n.rsplit(".", 1)[0]) for n in group]
    stacked = ".mlp.experts." in group[0]
    if want_q4 and group[0].endswith(".weight"):
        raws = [_q4_0_blocks(m, h) for m, h in zip(modules, permute, strict=True)]
        if all(r is not None for r in raws):
            return (np.stack(raws) if stacked else np.concatenate(raws)), True
    parts = []
    for name, module, n_heads in zip(group, modules, permute, strict=True):
        if name.endswith(".bias"):
            part = module.bias.detach().float().numpy()
        elif isinstance(module, RMSNorm):
            part = (module.weight.detach().float() + config.norm_offset).numpy()
        elif isinstance(module, LayerNorm):
            part = module.weight.detach().float().numpy()
        else:
            part = _float_weight(module).astype(np.float32)
        parts.append(rope_permute(part, n_heads) if n_heads else part)
    data = np.stack(parts) if stacked else np.concatenate(parts)
    if group[0].endswith("mlp.shared_expert_gate.weight"):
        data = data.reshape(-1)  # (1, dim) -> (dim,): llama.cpp's ffn_gate_inp_shexp is a vector
    return data, False


def modelfile_path(gguf: Path) -> Path:
    """The Ollama Modelfile written beside a GGUF file: model.gguf -> model.Modelfile."""
    return gguf.with_name(gguf.stem + ".Modelfile")


def _modelfile(gguf: Path, tok: Any) -> str:
    """Ollama's Modelfile: PocketLM's chat format as a Go template, or for an imported model its
    stop tokens and a word on its Jinja template (which PocketLM does not translate)."""
    name = re.sub(r"[^a-z0-9._-]+", "-", gguf.stem.lower()) or "pocketlm"
    head = (
        f"# Ollama: ollama create {name} -f {modelfile_path(gguf).name} && ollama run {name}\n"
        f"FROM ./{gguf.name}\n"
    )
    if tok.kind == "pocketlm":
        return (
            head + f'TEMPLATE """{OLLAMA_TEMPLATE}"""\n'
            'PARAMETER stop "<|end|>"\n'
            'PARAMETER stop "<|endoftext|>"\n'
        )
    if tok.chat_template is None:
        why = "# The tokenizer has no chat template: the model is for plain text completion.\n"
    else:
        why = (
            "# The model's chat template is Jinja (tokenizer.chat_template in the GGUF), and\n"
            "# PocketLM does not translate Jinja into Ollama's Go templates. Without a TEMPLATE\n"
            "# line Ollama uses its own template for chat templates it recognises; for others,\n"
            "# write a TEMPLATE line (e.g. copy `ollama show --template` of the same family).\n"
        )
    stops = sorted(tok.stop_ids)
    texts = [tok.backend.id_to_token(i) for i in stops]
    lines = "".join(f"PARAMETER stop {_go_string(t)}\n" for t in texts if t)
    return head + why + lines


def _go_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
