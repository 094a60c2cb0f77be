"""The models infer_speed.py measures, built once under its workdir and reused when present.

Native shapes are PocketLM models built from a ModelConfig (S, M, L; `moe`, a Mixtral-style
mixture, and `moe-dense`, a dense model with the same *active* parameters: its ffn is the two
selected experts' width). Imported shapes are random-weight Hugging Face folders in released
models' shapes (hf_folders.py: Qwen2.5-0.5B, Llama-3.2-1B, with PocketLM's small tokenizer; the
model keeps the real vocabulary) brought in by `pocketlm import`'s import_hf. All are random
(speed does not depend on the values), then quantized (bf16/int8/int4) and exported to GGUF.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from hf_folders import SHAPES as HF_SHAPES
from hf_folders import make_folder

_M = dict(dim=512, n_layers=8, n_heads=8, n_kv_heads=4, vocab_size=8192)
NATIVE = {
    "S": dict(dim=256, n_layers=8, n_heads=8, n_kv_heads=4, ffn_dim=1024, vocab_size=8192),
    "M": dict(_M, ffn_dim=1536),
    "L": dict(dim=576, n_layers=30, n_heads=9, n_kv_heads=3, ffn_dim=1536, vocab_size=49152),
    "moe": dict(_M, n_experts=8, n_experts_per_token=2, expert_ffn_dim=1536),
    "moe-dense": dict(_M, ffn_dim=2 * 1536),
}
IMPORTED = {"qwen0.5b": "qwen2.5-0.5b", "llama1b": "llama3.2-1b"}  # shape -> hf_folders name
SHAPES = [*NATIVE, *IMPORTED]
# ours -> the GGUF type llama.cpp runs for it; imported shapes start from bf16, fp32 is its upcast
PRECISIONS = {"fp32": "f32", "bf16": "bf16", "int8": "q8_0", "int4": "q4_0"}
# bytes a parameter takes on disk over everything an imported shape writes: HF bf16 source,
# bf16 + fp32 + int8 + int4 models, GGUF bf16 + f16 + f32 + q8_0 + q4_0
_IMPORTED_BYTES_PER_PARAM = 2 + 2 + 4 + 1.07 + 0.57 + 2 + 2 + 4 + 1.07 + 0.57
_DISK_MARGIN = 5e9


def precisions(shape: str) -> dict[str, str]:
    """PocketLM precision -> GGUF type measured for `shape` (every one, for every shape)."""
    del shape
    return dict(PRECISIONS)


def shape_facts(shape: str) -> dict:
    """{"config": its shape fields, "vocab_size", "experts": (n, k)} of `shape`."""
    if shape in NATIVE:
        c = NATIVE[shape]
        experts = (c.get("n_experts", 0), c.get("n_experts_per_token", 0))
        return {"config": c, "vocab_size": c["vocab_size"], "experts": experts}
    c = HF_SHAPES[IMPORTED[shape]]
    keep = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads")
    fields = {k: c[k] for k in (*keep, "intermediate_size", "vocab_size")}
    return {"config": fields, "vocab_size": c["vocab_size"], "experts": (0, 0)}


def hf_params(fields: dict) -> int:
    """Parameter count of a dense hf_folders shape (tied embeddings once; norms, biases ignored)."""
    d, f, layers = fields["hidden_size"], fields["intermediate_size"], fields["num_hidden_layers"]
    hd = fields.get("head_dim") or d // fields["num_attention_heads"]
    q, kv = fields["num_attention_heads"] * hd, fields["num_key_value_heads"] * hd
    per_layer = 2 * d * q + 2 * d * kv + 3 * d * f
    head = 0 if fields["tie_word_embeddings"] else fields["vocab_size"] * d
    return layers * per_layer + fields["vocab_size"] * d + head


def _log(t0: float, message: str) -> None:
    print(f"[prepare {time.perf_counter() - t0:6.0f}s] {message}", file=sys.stderr, flush=True)


def _done(path: Path) -> bool:
    return (path / "manifest.json").exists() if path.suffix != ".gguf" else path.exists()


def _tokenizer(work: Path) -> Path:
    from pocketlm.data.build import build_corpus
    from pocketlm.tokenizer.train import TokenizerConfig, train_tokenizer

    tok = work / "tokenizer"
    if not _done(tok):
        corpus = work / "corpus"
        if not _done(corpus):
            build_corpus(["stdlib"], corpus, overwrite=True)
        train_tokenizer(corpus, tok, TokenizerConfig(vocab_size=8192), overwrite=True)
    return tok


def _base_model(shape: str, d: Path, tok: Path, t0: float) -> tuple[Path, Path | None]:
    """(the model every precision derives from, an HF folder for transformers or None)."""
    from pocketlm.checkpoint.model_io import save_model
    from pocketlm.interop.hf_export import export_hf
    from pocketlm.interop.hf_import import import_hf
    from pocketlm.model.config import ModelConfig
    from pocketlm.model.transformer import build_model

    if shape in NATIVE:
        base, hf = d / "fp32", d / "hf"
        if not _done(base):
            _log(t0, f"{shape}: building {base}")
            config = ModelConfig(max_seq_len=2048, tie_embeddings=True, **NATIVE[shape])
            save_model(base, build_model(config, seed=0), tok, overwrite=True)
        if NATIVE[shape].get("n_experts"):
            return base, None  # export hf writes LlamaForCausalLM, which has no experts
        if not _done(hf):
            _log(t0, f"{shape}: exporting {hf}")
            export_hf(base, hf, overwrite=True)
        return base, hf
    name, base, hf = IMPORTED[shape], d / "bf16", d / "hf-source"
    if not _done(base):
        need = hf_params(HF_SHAPES[name]) * _IMPORTED_BYTES_PER_PARAM
        free = shutil.disk_usage(d).free
        if free < need + _DISK_MARGIN:
            raise SystemExit(
                f"{shape}: needs ~{need / 1e9:.1f} GB on {d}, {free / 1e9:.1f} GB free"
            )
        if not (hf / "config.json").exists():
            _log(t0, f"{shape}: random {name} in bf16 -> {hf}")
            shutil.rmtree(hf, ignore_errors=True)
            make_folder(name, d, tok).rename(hf)
        _log(t0, f"{shape}: pocketlm import {hf} -> {base}")
        import_hf(hf, base, overwrite=True)
        # what the quantized models and GGUF files still need, now the bf16 model is in
        still = hf_params(HF_SHAPES[name]) * (_IMPORTED_BYTES_PER_PARAM - 4)
        if shutil.disk_usage(d).free < still + _DISK_MARGIN:
            _log(t0, f"{shape}: disk is tight, deleting the HF source {hf} (no transformers rows)")
            shutil.rmtree(hf)
    return base, (hf if (hf / "config.json").exists() else None)


def _upcast_fp32(base: Path, d: Path, t0: float) -> Path:
    """An imported (bf16) model's fp32 twin: the same values, 4 bytes each (the fp32 rows)."""
    from pocketlm.checkpoint.model_io import load_model, save_model

    fp32 = d / "fp32"
    if not _done(fp32):
        _log(t0, f"{d.name}: fp32 upcast of {base} -> {fp32}")
        save_model(fp32, load_model(base).model.float(), base, overwrite=True)
    return fp32


def prepare(work: Path, shapes: list[str]) -> dict[str, dict[str, Path]]:
    """{shape: {precision or gguf_<type> or "hf": path}} for each shape, built when missing."""
    from pocketlm.compress.quantize import quantize_model_dir
    from pocketlm.interop.gguf_export import export_gguf

    os.environ.setdefault("POCKETLM_NO_PROGRESS", "1")
    t0 = time.perf_counter()
    work.mkdir(parents=True, exist_ok=True)
    tok = _tokenizer(work)
    out: dict[str, dict[str, Path]] = {}
    for shape in shapes:
        d = work / shape
        d.mkdir(exist_ok=True)
        base, hf = _base_model(shape, d, tok, t0)
        paths = {base.name: base, **({"hf": hf} if hf else {})}
        if shape in IMPORTED:
            paths["fp32"] = _upcast_fp32(base, d, t0)
        for scheme in ("bf16", "int8", "int4"):
            paths[scheme] = d / scheme
            if not _done(paths[scheme]):
                _log(t0, f"{shape}: quantize {scheme}")
                quantize_model_dir(base, paths[scheme], scheme, overwrite=True)
        kinds = [*precisions(shape).values(), "f16"]
        for kind in kinds:
            paths[f"gguf_{kind}"] = d / f"model-{kind}.gguf"
            if not _done(paths[f"gguf_{kind}"]):
                _log(t0, f"{shape}: export gguf {kind}")
                export_gguf(base, paths[f"gguf_{kind}"], out_type=kind, overwrite=True)
        _log(t0, f"{shape}: ready in {d}")
        out[shape] = paths
    return out
