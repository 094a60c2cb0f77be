"""Evaluate a saved model on a tokens artifact (the library side of `pocketlm eval`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pocketlm.checkpoint.model_io import load_model
from pocketlm.common.device import resolve_device
from pocketlm.data.token_shards import TokenShards
from pocketlm.evals.bpb import evaluate_bpb, token_byte_lengths
from pocketlm.interop.open_model import model_dir as resolve_model


def evaluate_model(
    model_dir: str | Path,
    tokens_dir: str | Path,
    *,
    split: str = "val",
    max_tokens: int = 262144,
    ctx: int = 0,
    batch_size: int = 8,
    device: str = "auto",
    adapter: str | Path | None = None,
) -> dict[str, Any]:
    """Loss and bits per byte of a model (with `adapter`: the base model with that LoRA adapter
    applied) on a split; refuses tokens made by another tokenizer."""
    dev = resolve_device(device)
    if adapter is not None:
        from pocketlm.checkpoint.adapted_model import load_adapted_model

        loaded = load_adapted_model(resolve_model(model_dir), adapter, device=dev)
    else:
        loaded = load_model(resolve_model(model_dir), device=dev)
    shards = TokenShards(tokens_dir)
    shards.check_tokenizer(
        loaded.tokenizer.fingerprint, loaded.config.vocab_size, f"the model in {loaded.directory}"
    )
    window = min(ctx or loaded.config.max_seq_len, loaded.config.max_seq_len)
    r = evaluate_bpb(
        loaded.model,
        shards.split(split),
        token_byte_lengths(loaded.tokenizer, loaded.config.vocab_size),
        ctx=window,
        batch_size=batch_size,
        max_tokens=max_tokens,
        device=dev,
    )
    return {
        "model": str(loaded.directory),
        "split": split,
        "loss": r.loss,
        "bpb": r.bpb,
        "tokens": r.tokens,
        "bytes": r.bytes,
        "ctx": window,
    }
