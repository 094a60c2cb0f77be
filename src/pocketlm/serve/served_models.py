"""The models one server answers for: a base and the LoRA adapters served on it, each with its
own continuous-batching scheduler, and how a request's `model` field picks one of them."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from pocketlm.common.errors import ConfigError
from pocketlm.engine.scheduler import BatchScheduler, SchedulerStats
from pocketlm.serve.openai_protocol import ProtocolError
from pocketlm.tokenizer.tokenizer import Tokenizer


@dataclass(frozen=True)
class ServedModel:
    """One model id clients can name: its scheduler and tokenizer (an adapter: base + adapter)."""

    model_id: str
    scheduler: BatchScheduler
    tokenizer: Tokenizer
    parent: str | None = None  # an adapter: the id of the base it runs on
    backend_name: str = ""
    adapter: int = -1  # on a scheduler shared with the base: its adapter index there


def check_model_ids(ids: Sequence[str]) -> None:
    """Raise ConfigError unless every served id is non-empty and unique."""
    seen: set[str] = set()
    for model_id in ids:
        if not model_id or not model_id.strip():
            raise ConfigError("a served model needs a non-empty name")
        if model_id in seen:
            raise ConfigError(
                f"two served models are named {model_id!r}: give each --adapter its own NAME=DIR "
                "(or rename the base with --model-name)"
            )
        seen.add(model_id)


def requested_model(body: bytes) -> str | None:
    """The `model` a JSON request body names, or None (no such string field, or not JSON: the
    request's own validation then says what is wrong)."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    model = data.get("model") if isinstance(data, dict) else None
    return model if isinstance(model, str) and model else None


def pick(models: dict[str, object], default: str, name: str | None, strict: bool):
    """The entry of `models` a request naming `name` gets: the default when it names none (or,
    when not strict, one this server does not have); ProtocolError 404 for an unknown name."""
    if name is None or name in models:
        return models[name if name is not None else default]
    if not strict:
        return models[default]
    raise ProtocolError(
        f"the model '{name}' does not exist; this server has {', '.join(map(repr, models))} "
        "(see /v1/models)",
        param="model",
        code="model_not_found",
        status=404,
    )


def combined_stats(all_stats: Sequence[SchedulerStats]) -> SchedulerStats:
    """The stats of several schedulers as one: counts summed, running only when all are."""
    return SchedulerStats(
        slots=sum(s.slots for s in all_stats),
        active=sum(s.active for s in all_stats),
        queued=sum(s.queued for s in all_stats),
        prompt_tokens=sum(s.prompt_tokens for s in all_stats),
        generated_tokens=sum(s.generated_tokens for s in all_stats),
        finished=sum(s.finished for s in all_stats),
        running=all(s.running for s in all_stats),
    )
