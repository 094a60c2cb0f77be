"""`pocketlm prune`: a model artifact -> a smaller model of its family, cut by structured pruning.

Importance is measured on calibration tokens (compress/importance.py), the sizes come from a
parameter target or explicit sizes (compress/prune_plan.py), and surgery slices the original's
tensors into a fresh model (compress/prune_surgery.py). The result is an ordinary model artifact
(its parent the original, a summary of what was cut) that `pocketlm distill --teacher ORIGINAL
--student PRUNED` heals.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from pocketlm.checkpoint.model_io import load_model, read_quantization, save_model
from pocketlm.common.errors import ConfigError, InputError
from pocketlm.common.log import get_logger
from pocketlm.common.manifest import parent_ref
from pocketlm.compress.importance import activation_importance
from pocketlm.compress.prune_plan import (
    DEFAULT_AXES,
    PruneSizes,
    check_prunable,
    choose,
    params_of,
    sizes_for_target,
    sizes_of,
    target_from_ratio,
)
from pocketlm.compress.prune_surgery import prune_model
from pocketlm.interop.open_model import model_dir as resolve_model

_log = get_logger("pocketlm.compress.prune")


def prune_model_dir(
    model_dir: str | Path,
    out: str | Path,
    calib_dir: str | Path,
    *,
    target_params: int | None = None,
    ratio: float | None = None,
    layers: int | None = None,
    heads: int | None = None,
    ffn_dim: int | None = None,
    dim: int | None = None,
    axes: Sequence[str] = DEFAULT_AXES,
    calib_tokens: int = 16384,
    ctx: int = 256,
    batch_size: int = 8,
    command: Sequence[str] | None = None,
    overwrite: bool = False,
) -> tuple[Path, dict[str, Any]]:
    """Prune a model to a parameter target (`target_params`, or `ratio` of its non-embedding
    parameters) and/or explicit sizes (`heads`: query heads, a multiple of the heads per kv
    group); returns (artifact, report)."""
    if target_params is not None and ratio is not None:
        raise ConfigError("give --target-params or --ratio, not both")
    loaded = load_model(resolve_model(model_dir))
    config = loaded.config
    if read_quantization(loaded.directory)["scheme"] != "none":
        raise InputError(f"{loaded.directory} is quantized; prune the float model, then quantize")
    check_prunable(config)
    fixed = _fixed_sizes(config, layers, heads, ffn_dim, dim)
    if ratio is not None:
        target_params = target_from_ratio(config, ratio)
    if target_params is not None:
        sizes = sizes_for_target(config, target_params, axes=axes, fixed=fixed)
    elif fixed:
        names = {"layers": "n_layers", "heads": "n_kv_heads", "ffn": "ffn_dim", "dim": "dim"}
        sizes = PruneSizes(
            **{**sizes_of(config).__dict__, **{names[a]: n for a, n in fixed.items()}}
        )
    else:
        raise ConfigError("nothing to prune to: give --target-params, --ratio or explicit sizes")
    importance = activation_importance(
        loaded.model, _calibration_batches(loaded, calib_dir, calib_tokens, ctx, batch_size)
    )
    choice = choose(
        sizes,
        importance.layers,
        importance.heads,
        importance.ffn,
        importance.dim,
        config.n_kv_heads,
    )
    pruned = prune_model(loaded.model, choice)
    report = _report(config, sizes, choice, importance.tokens, target_params)
    path = save_model(
        out,
        pruned,
        loaded.directory,
        parents=[parent_ref(loaded.directory)],
        config={
            "target_params": target_params,
            "ratio": ratio,
            "axes": list(axes),
            "calib": str(calib_dir),
            "calib_tokens": calib_tokens,
            "ctx": ctx,
        },
        summary={"pruning": report},
        command=command,
        overwrite=overwrite,
    )
    _log.info("pruned %s -> %s: %s -> %s parameters", loaded.directory, path,
              f"{report['params_before']:,}", f"{report['params_after']:,}")  # fmt: skip
    return path, report


def _fixed_sizes(config, layers, heads, ffn_dim, dim) -> dict[str, int]:
    """Explicit sizes by axis name; query heads become attention groups."""
    fixed = {"layers": layers, "ffn": ffn_dim, "dim": dim}
    if heads is not None:
        group = config.n_heads // config.n_kv_heads
        if heads % group or not 0 < heads <= config.n_heads:
            raise ConfigError(
                f"--heads must be a multiple of {group} (query heads per kv head: whole GQA "
                f"groups are cut) in {group}..{config.n_heads}, got {heads}"
            )
        fixed["heads"] = heads // group
    return {axis: n for axis, n in fixed.items() if n is not None}


def _calibration_batches(
    loaded: Any, calib_dir: str | Path, max_tokens: int, ctx: int, batch_size: int
) -> Iterator[torch.Tensor]:
    """Consecutive token windows (B, ctx) from the calibration tokens' train split."""
    from pocketlm.data.loader import eval_windows
    from pocketlm.data.token_shards import TokenShards

    shards = TokenShards(calib_dir)
    shards.check_tokenizer(
        loaded.tokenizer.fingerprint, loaded.config.vocab_size, f"the model in {loaded.directory}"
    )
    split = shards.split("train" if shards.has_split("train") else "val")
    ctx = min(ctx, loaded.config.max_seq_len)
    if len(split) <= ctx:
        raise InputError(f"{calib_dir}: {len(split)} tokens, fewer than one window of {ctx} + 1")
    for x, _ in eval_windows(split, batch_size, ctx, max_tokens):
        yield torch.from_numpy(x)


def _report(config, sizes: PruneSizes, choice, tokens: int, target: int | None) -> dict[str, Any]:
    """What was cut, for the manifest's summary."""
    before = sizes_of(config)
    return {
        "params_before": config.num_params(),
        "params_after": params_of(config, sizes),
        "target_params": target,
        "non_embedding_before": config.num_params(include_embeddings=False),
        "layers": [before.n_layers, sizes.n_layers],
        "heads": [config.n_heads, sizes.n_kv_heads * (config.n_heads // config.n_kv_heads)],
        "kv_heads": [before.n_kv_heads, sizes.n_kv_heads],
        "ffn_dim": [before.ffn_dim, sizes.ffn_dim],
        "dim": [before.dim, sizes.dim],
        "kept_layers": list(choice.layers),
        "removed_layers": [i for i in range(config.n_layers) if i not in choice.layers],
        "calib_tokens": tokens,
        "importance": "activations (Minitron): layer 1-cos(in,out), head output norm, "
        "FFN mean |act|, hidden mean |x|",
    }
