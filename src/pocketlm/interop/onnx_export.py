"""`export onnx`: a model artifact as an ONNX directory onnxruntime (and Optimum-style tools) run.

The directory holds model.onnx (interop/onnx_graph.py: a decoder with its KV cache as inputs and
outputs, Hugging Face Optimum's names and dynamic axes, or a classifier), onnx_config.json (what a
runner needs without reading the graph: the task, the names, the cache shape, the context, the
special ids, a classifier's labels), config.json as `export hf` writes it where transformers has
the model's family, the source model's tokenizer files and chat template copied unchanged (so the
tokenizer read from here is the model's own), and PocketLM's manifest.json.

A decoder whose options the fused graph writes (interop/onnx_fused.py: RMSNorm, a gated MLP,
plain/linear/llama3 rotary) is written from its weights with onnxruntime's fused operators
(1.05-1.8x the traced graph's decode speed; benchmarks/RESULTS.md). Any other model's graph is
traced with PyTorch's TorchScript-based ONNX exporter (`dynamo=False`): with torch
2.13 it traces every option set of the one model in about a second per small model and keeps the
classifier's shape-only checks as constants, where the torch.export-based exporter takes several
times longer and refuses data-dependent Python checks. A quantized PocketLM model is dequantized
first (the weights it computes with, as floats). --precision int8 then quantizes the fp32 graph's
weights (interop/onnx_quantize.py).
"""

from __future__ import annotations

import json
import shutil
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pocketlm.checkpoint.layout import CARRIED_FILES
from pocketlm.checkpoint.model_io import load_model
from pocketlm.common.errors import ArtifactError, ConfigError, PocketLMError, require
from pocketlm.common.manifest import ArtifactWriter, parent_ref
from pocketlm.interop import onnx_graph
from pocketlm.interop.onnx_files import (
    ONNX_CONFIG_FILE,
    ONNX_DATA_FILE,
    ONNX_FILE,
    TEXT_CLASSIFICATION,
    TEXT_GENERATION,
)
from pocketlm.interop.open_model import ONNX_KIND
from pocketlm.interop.open_model import model_dir as resolve_model
from pocketlm.model.config import ModelConfig
from pocketlm.model.quantized import dequantize_modules, is_quantized
from pocketlm.model.transformer import CausalLM
from pocketlm.tokenizer.tokenizer import TOKENIZER_FILE, TOKENIZER_FILES, Tokenizer

# Weights over this many bytes go to ONNX_DATA_FILE: a protobuf holds at most 2 GiB, and the
# graph's nodes need room beside the initializers
EXTERNAL_DATA_BYTES = 1_800_000_000
PRECISIONS = ("fp32", "int8")
OPSET = onnx_graph.OPSET


def export_onnx(
    model_dir: str | Path,
    out: str | Path,
    *,
    precision: str = "fp32",
    command: Sequence[str] | None = None,
    overwrite: bool = False,
    external_data_bytes: int = EXTERNAL_DATA_BYTES,
    graph: str = "auto",
) -> Path:
    """Write an ONNX directory (kind 'onnx_export') for a model artifact; returns its path.

    Weights over external_data_bytes are saved beside the graph, in model.onnx.data. graph:
    "auto" (the fused decoder where it writes the model, else the traced graph) or "traced"."""
    if graph not in ("auto", "traced"):
        raise ConfigError(f"graph must be 'auto' or 'traced', got {graph!r}")
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    require("onnx", "onnx", "ONNX export")
    directory = resolve_model(model_dir)
    loaded = load_model(directory, dtype=torch.float32)
    config = loaded.config
    refused = onnx_graph.unsupported(config)
    if refused:
        raise ArtifactError(f"{directory}: export onnx does not handle {'; '.join(refused)}")
    if is_quantized(loaded.model):  # the weights the quantized model computes with, as floats
        dequantize_modules(loaded.model)
    copied = [n for n in (*TOKENIZER_FILES, *CARRIED_FILES) if (directory / n).is_file()]
    if TOKENIZER_FILE not in copied:
        raise ArtifactError(f"{directory}: missing {TOKENIZER_FILE}")
    task = TEXT_GENERATION if config.has_lm_head else TEXT_CLASSIFICATION
    with ArtifactWriter(
        out,
        ONNX_KIND,
        config={"format": "onnx", "precision": precision, "opset": OPSET, "task": task},
        parents=[parent_ref(directory)],
        command=command,
        overwrite=overwrite,
    ) as art:
        started = time.perf_counter()
        fp32_path = art.path("model.fp32.onnx") if precision != "fp32" else art.path(ONNX_FILE)
        names = write_graph(
            loaded.model,
            fp32_path,
            share_tied=precision == "fp32",
            external=external_data_bytes,
            fused=graph == "auto",
        )
        traced_s = time.perf_counter() - started
        if precision == "int8":
            from pocketlm.interop.onnx_quantize import quantize_int8

            quantize_int8(fp32_path, art.path(ONNX_FILE), external=external_data_bytes)
            for leftover in (fp32_path, art.path(fp32_path.name + ".data")):
                leftover.unlink(missing_ok=True)
        for name in copied:
            shutil.copyfile(directory / name, art.path(name))
        names["external_data"] = [ONNX_DATA_FILE] if art.path(ONNX_DATA_FILE).exists() else []
        runner = onnx_config(config, loaded.tokenizer, task, precision, names)
        _write_json(art.path(ONNX_CONFIG_FILE), runner)
        hf_json = _hf_config_json(directory, config, loaded.tokenizer)
        if hf_json is not None:
            _write_json(art.path("config.json"), hf_json)
        return art.commit(
            {
                "task": task,
                "precision": precision,
                "params": loaded.model.num_params(),
                "graph": names["graph"],
                "onnx_bytes": sum(
                    art.path(n).stat().st_size for n in (ONNX_FILE, *names["external_data"])
                ),
                "trace_seconds": round(traced_s, 2),
                "export_seconds": round(time.perf_counter() - started, 2),
            }
        )


def write_graph(
    model: CausalLM,
    path: Path,
    *,
    share_tied: bool = True,
    external: int = EXTERNAL_DATA_BYTES,
    fused: bool = True,
) -> dict[str, Any]:
    """The model's graph in `path`: the fused decoder (interop/onnx_fused.py) where it writes the
    model's options, else the traced one; {"inputs", "outputs", "graph"}. Weights over
    `external` bytes go to path + ".data"."""
    from pocketlm.interop import onnx_fused

    if fused and not onnx_fused.supports(model.config):
        proto = onnx_fused.build_fused(model, share_tied=share_tied)
        save_onnx(proto, path, external)
        inputs, outputs, _ = onnx_graph.decoder_signature(model.config)
        return {"inputs": inputs, "outputs": outputs, "graph": "fused"}
    scratch = path.parent / ".trace"  # the exporter may write a large model's tensors apart
    scratch.mkdir()
    try:
        names: dict[str, Any] = {**trace_to_onnx(model, scratch / path.name), "graph": "traced"}
        files = list(scratch.iterdir())
        tied = model.config.has_lm_head and model.config.tie_embeddings and share_tied
        if len(files) == 1 and files[0].stat().st_size <= external and not tied:
            files[0].replace(path)
        else:
            import onnx

            proto = onnx.load(str(scratch / path.name))
            if tied:
                share_tied_table(proto)
            save_onnx(proto, path, external)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return names


def share_tied_table(proto: Any) -> None:
    """In a traced graph, replace the LM head's copy of the embedding table (the exporter folds
    the tied weight's transpose into an initializer of its own) by a Transpose of the table."""
    from onnx import helper, numpy_helper

    graph = proto.graph
    by_name = {t.name: t for t in graph.initializer}
    gathers = [n.input[0] for n in graph.node if n.op_type == "Gather" and n.input[0] in by_name]
    if not gathers:
        return
    table = numpy_helper.to_array(by_name[gathers[0]])  # (V, dim)
    for init in list(graph.initializer):
        if tuple(init.dims) == table.shape[::-1] and np.array_equal(numpy_helper.to_array(init), table.T):  # fmt: skip
            graph.initializer.remove(init)
            transpose = helper.make_node("Transpose", [gathers[0]], [init.name], perm=[1, 0], name="tied_lm_head")  # fmt: skip
            graph.node.insert(0, transpose)
            return


def save_onnx(proto: Any, path: Path, external: int) -> None:
    """Save a ModelProto to `path`; its weights to path + ".data" when over `external` bytes."""
    import onnx

    weights = sum(len(t.raw_data) for t in proto.graph.initializer)
    if weights <= external:
        onnx.save_model(proto, str(path))
        return
    onnx.save_model(
        proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
        location=path.name + ".data", size_threshold=1024,
    )  # fmt: skip


def trace_to_onnx(model: CausalLM, path: Path) -> dict[str, list[str]]:
    """Trace the model's decoder (or classifier) graph into `path`; {"inputs", "outputs"} names."""
    config = model.config
    if config.has_lm_head:
        graph = onnx_graph.DecoderGraph(model)
        inputs, outputs, axes = onnx_graph.decoder_signature(config)
        example = onnx_graph.decoder_example(config)
    else:
        graph = onnx_graph.ClassifierGraph(model)
        inputs, outputs, axes = onnx_graph.classifier_signature(config)
        example = onnx_graph.classifier_example(config)
    with warnings.catch_warnings(), torch.no_grad():
        # the TorchScript exporter's deprecation notice and the tracer's notes on the model's
        # shape checks (constant for every input the graph takes): nothing for the user to do
        warnings.simplefilter("ignore")
        torch.onnx.register_custom_op_symbolic("aten::cummax", onnx_graph.cummax_symbolic, OPSET)
        try:
            torch.onnx.export(
                graph,
                example,
                str(path),
                input_names=inputs,
                output_names=outputs,
                dynamic_axes=axes,
                opset_version=OPSET,
                dynamo=False,
                do_constant_folding=True,
            )
        except Exception as exc:  # the exporter raises many kinds; name the model option set
            raise PocketLMError(
                f"ONNX export failed for a model with options {list(config.family_features())}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        finally:
            torch.onnx.unregister_custom_op_symbolic("aten::cummax", OPSET)
    return {"inputs": inputs, "outputs": outputs}


def onnx_config(
    config: ModelConfig,
    tokenizer: Tokenizer,
    task: str,
    precision: str,
    names: Mapping[str, Any],
) -> dict[str, Any]:
    """onnx_config.json: what a runner needs to feed the graph without reading it."""
    out: dict[str, Any] = {
        "format": "pocketlm-onnx",
        "version": 1,
        "task": task,
        "file": ONNX_FILE,
        "precision": precision,
        "opset": OPSET,
        "inputs": names["inputs"],
        "outputs": names["outputs"],
        "graph": names.get("graph", "traced"),
        "external_data": list(names.get("external_data", [])),
        "vocab_size": config.vocab_size,
        "context_length": config.max_seq_len,
        "bos_token_id": tokenizer.bos_id,
        "eos_token_ids": sorted(tokenizer.stop_ids),
        "pad_token_id": tokenizer.pad_id,
    }
    if task == TEXT_GENERATION:
        out["cache"] = {
            "n_layers": config.n_layers,
            "n_kv_heads": config.n_kv_heads,
            "head_dim": config.resolved_head_dim,
            "dtype": "float32",
            "layout": "batch, n_kv_heads, sequence, head_dim",
        }
        out["sliding_window"] = config.sliding_window
        # how a batch of rows of different lengths lines up (interop/onnx_fused.py: right)
        out["padding_side"] = "right" if out["graph"] == "fused" else "left"
    else:
        out["labels"] = list(config.labels)
        out["pooling"] = config.pooling
    return out


def _hf_config_json(directory: Path, config: ModelConfig, tokenizer: Tokenizer) -> dict | None:
    """config.json as `export hf` writes it, for tools that read one beside an ONNX graph; None
    when transformers has no equivalent of the model (the ONNX graph does not need it)."""
    from pocketlm.common.errors import UnsupportedModelError
    from pocketlm.interop.families import hf_config as family_config
    from pocketlm.interop.hf_export import classifier_pad_id, export_family, import_source

    try:
        source = import_source(directory)
        spec, written = export_family(config, source)
        if source is not None:
            token_ids = source.get("token_ids") or {}
        else:
            token_ids = {"bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id,
                         "pad_token_id": tokenizer.pad_id}  # fmt: skip
        if written.labels:
            token_ids = {**token_ids, "pad_token_id": classifier_pad_id(token_ids, tokenizer)}
        return family_config.hf_config(spec, written, dtype="float32", token_ids=token_ids)
    except (ArtifactError, UnsupportedModelError):
        return None


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
