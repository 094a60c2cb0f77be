"""`pocketlm quantize`: a model artifact -> a smaller model artifact (bf16, int8 or int4 weights).

The result loads everywhere a model does (generate, eval, bench, the server, the exporters). Given
token data it also reports the quality cost: validation bits per byte before and after.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from pocketlm.checkpoint.layout import QUANT_FILE, WEIGHTS_FILE
from pocketlm.checkpoint.model_io import load_model, read_quantization, save_model
from pocketlm.common.errors import ConfigError, InputError
from pocketlm.common.log import get_logger
from pocketlm.common.manifest import parent_ref
from pocketlm.interop.open_model import model_dir as resolve_model
from pocketlm.model.quantized import quantize_modules

Scheme = Literal["bf16", "int8", "int4"]
_log = get_logger("pocketlm.compress.quantize")


def quantize_model_dir(
    model_dir: str | Path,
    out: str | Path,
    scheme: Scheme,
    *,
    group_size: int = 32,
    tokens_dir: str | Path | None = None,
    eval_tokens: int = 131072,
    command: Sequence[str] | None = None,
    overwrite: bool = False,
) -> tuple[Path, dict[str, Any]]:
    """Quantize every linear layer and the embeddings; returns (artifact, report)."""
    if scheme not in ("bf16", "int8", "int4"):
        raise ConfigError(f"unknown scheme {scheme!r}: use bf16, int8 or int4")
    if scheme == "int4" and (group_size < 32 or group_size % 32):
        raise ConfigError(f"--group-size must be a multiple of 32 for int4, got {group_size}")
    loaded = load_model(resolve_model(model_dir))
    if read_quantization(loaded.directory)["scheme"] != "none":
        raise InputError(
            f"{loaded.directory} is already quantized; quantize the float model instead"
        )
    config = loaded.config
    if scheme != "bf16" and not config.has_lm_head:
        raise InputError(
            f"{loaded.directory}: {scheme} quantization is implemented for language models; a "
            "classifier or encoder (no LM head) quantizes to bf16 only"
        )
    in_dims = {config.dim, config.q_dim}
    if config.n_experts:  # the dense ffn_dim is unused: every MLP is the experts'
        in_dims |= {config.expert_ffn_dim, config.shared_expert_ffn_dim} - {0}
    else:
        in_dims.add(config.resolved_ffn_dim)
    bad = sorted(d for d in in_dims if d % (group_size if scheme == "int4" else 32))
    if scheme != "bf16" and bad:
        raise InputError(
            f"{scheme} needs input sizes that are multiples of {group_size if scheme == 'int4' else 32}; this model has {bad}"
        )
    report: dict[str, Any] = {
        "scheme": scheme,
        "group_size": group_size if scheme == "int4" else None,
    }
    before = _bpb(loaded.model, loaded, tokens_dir, eval_tokens) if tokens_dir else None
    model = loaded.model
    if scheme == "bf16":
        model = model.to(torch.bfloat16)
        for name, module in model.named_modules():  # norms stay fp32 (tiny, and precision-critical)
            if name.endswith("norm"):
                module.float()
    else:
        quantize_modules(model, scheme, group_size)
    after = _bpb(model, loaded, tokens_dir, eval_tokens) if tokens_dir else None
    if before is not None and after is not None:
        report.update(
            {
                "val_bpb_before": round(before, 5),
                "val_bpb_after": round(after, 5),
                "bpb_cost_pct": round(100 * (after - before) / before, 3),
            }
        )
    src_bytes = (loaded.directory / WEIGHTS_FILE).stat().st_size

    def write_quant(art) -> None:
        art.path(QUANT_FILE).write_text(
            json.dumps(
                {"scheme": scheme, "group_size": group_size, "source": str(loaded.directory)},
                indent=2,
            )
            + "\n",
            encoding="utf-8",
        )

    path = save_model(
        out,
        model,
        loaded.directory,
        parents=[parent_ref(loaded.directory)],
        config={"scheme": scheme, "group_size": group_size},
        summary={"quantization": report},
        command=command,
        overwrite=overwrite,
        extra=write_quant,
    )
    report["bytes_before"] = src_bytes
    report["bytes_after"] = (path / WEIGHTS_FILE).stat().st_size
    _log.info(
        "quantized %s -> %s (%s): %.1f MB -> %.1f MB",
        loaded.directory,
        path,
        scheme,
        src_bytes / 1e6,
        report["bytes_after"] / 1e6,
    )
    return path, report


def _bpb(model: torch.nn.Module, loaded: Any, tokens_dir: str | Path, eval_tokens: int) -> float:
    from pocketlm.data.token_shards import TokenShards
    from pocketlm.evals.bpb import evaluate_bpb, token_byte_lengths

    shards = TokenShards(tokens_dir)
    shards.check_tokenizer(
        loaded.tokenizer.fingerprint, loaded.config.vocab_size, f"the model in {loaded.directory}"
    )
    split = shards.split("val" if shards.has_split("val") else "train")
    # Evaluate in fp32 (a bf16 model's weights are upcast on the fly by autocast-free matmuls).
    eval_model = model if next(model.parameters()).dtype == torch.float32 else _float_copy(model)
    return evaluate_bpb(
        eval_model,
        split,
        token_byte_lengths(loaded.tokenizer, loaded.config.vocab_size),
        ctx=loaded.config.max_seq_len,
        max_tokens=eval_tokens,
    ).bpb


def _float_copy(model: torch.nn.Module) -> torch.nn.Module:
    import copy

    return copy.deepcopy(model).float()
