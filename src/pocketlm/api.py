"""Convenience functions of the public Python API (`import pocketlm`) that the library's
functions do not already are: one-call generation and dotted-key configuration."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def configure(config: T, settings: dict[str, Any] | None = None, **changes: Any) -> T:
    """A copy of a config dataclass with dotted-key changes, as `--set` gives them on the command
    line: configure(PretrainConfig(), {"model.preset": "micro-6m", "train.budget": "10m"})."""
    from pocketlm.common.config import replace

    return replace(config, **{**(settings or {}), **changes})


def generate(model: str | Path | Any, prompt: str, **sampling: Any) -> str:
    """The completion of `prompt` by a model directory (opened for this call) or an engine from
    `pocketlm.load`; keywords are SamplingParams fields (max_new_tokens, temperature, top_p,
    seed, stop, ...)."""
    from pocketlm.engine.generation import GenerationEngine
    from pocketlm.engine.load import load_engine
    from pocketlm.engine.sampling import SamplingParams

    engine = model if isinstance(model, GenerationEngine) else load_engine(model)
    return engine.complete(prompt, SamplingParams(**sampling)).text
