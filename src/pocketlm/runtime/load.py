"""Open a saved model as a ready-to-use GenerationEngine (the library side of `pocketlm generate`)."""

from __future__ import annotations

from pathlib import Path

from pocketlm.checkpoint.model_io import load_model
from pocketlm.common.device import resolve_device, resolve_precision, torch_dtype
from pocketlm.runtime.backends import TorchBackend
from pocketlm.runtime.engine import GenerationEngine


def load_engine(
    model: str | Path,
    *,
    device: str = "auto",
    precision: str = "auto",
    max_len: int | None = None,
) -> GenerationEngine:
    """An engine over a model dir (or a training run's final model / latest checkpoint)."""
    dev = resolve_device(device)
    dtype = torch_dtype(resolve_precision(precision, dev))
    loaded = load_model(model, device=dev, dtype=dtype)
    backend = TorchBackend(loaded.model, device=dev, dtype=dtype, max_len=max_len)
    return GenerationEngine(backend, loaded.tokenizer)
