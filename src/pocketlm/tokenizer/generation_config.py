"""A model folder's generation_config.json: the ids that end a sequence and the sampling defaults.

Hugging Face models ship their generation settings there: `eos_token_id` (one id or a list, e.g.
Llama 3.2's end-of-text, end-of-message and end-of-turn ids), and often `temperature`, `top_p`,
`top_k`, `min_p`, `repetition_penalty`, `max_new_tokens` and `do_sample`. Only the fields the
file holds become defaults (`do_sample: false` means greedy, temperature 0); the rest keep
PocketLM's own defaults, and the user's flags or request fields override both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from pocketlm.common.errors import ArtifactError
from pocketlm.tokenizer.hf_files import read_json_file

GENERATION_CONFIG_FILE = "generation_config.json"
SAMPLING_FIELDS = ("temperature", "top_k", "top_p", "min_p", "repetition_penalty", "max_new_tokens")


@dataclass(frozen=True)
class GenerationDefaults:
    """What a model's generation_config.json says; None for each field it does not set."""

    source: str | None = None  # the file the values came from (for messages and --help)
    eos_token_ids: tuple[int, ...] = ()
    temperature: float | None = None  # 0 = greedy (do_sample false)
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    max_new_tokens: int | None = None

    def sampling(self) -> dict[str, Any]:
        """The sampling fields the file sets, keyed as SamplingParams names them."""
        return {f: getattr(self, f) for f in SAMPLING_FIELDS if getattr(self, f) is not None}


def read_generation_config(directory: str | Path) -> GenerationDefaults:
    """The generation defaults of a model folder (empty when it has no generation_config.json)."""
    path = Path(directory) / GENERATION_CONFIG_FILE
    data = read_json_file(path)
    if data is None:
        return GenerationDefaults()
    return parse_generation_config(data, str(path))


def parse_generation_config(data: dict[str, Any], source: str) -> GenerationDefaults:
    """GenerationDefaults from generation_config.json's fields; ArtifactError names a bad one."""
    values: dict[str, Any] = {"source": source, "eos_token_ids": _eos_ids(data, source)}
    checks = {
        "temperature": (float, lambda v: v >= 0, ">= 0"),
        "top_k": (int, lambda v: v >= 0, ">= 0"),
        "top_p": (float, lambda v: 0 < v <= 1, "in (0, 1]"),
        "min_p": (float, lambda v: 0 <= v < 1, "in [0, 1)"),
        "repetition_penalty": (float, lambda v: v > 0, "> 0"),
        "max_new_tokens": (int, lambda v: v >= 1, ">= 1"),
    }
    for name, (kind, ok, expected) in checks.items():
        value = data.get(name)
        if value is None:
            continue
        if not _is_number(value, kind) or not ok(value):
            raise ArtifactError(f"{source}: {name} must be a number {expected}, got {value!r}")
        values[name] = kind(value)
    do_sample = data.get("do_sample")
    if do_sample is not None and not isinstance(do_sample, bool):
        raise ArtifactError(f"{source}: do_sample must be true or false, got {do_sample!r}")
    if do_sample is False:
        values["temperature"] = 0.0  # transformers samples greedily whatever the temperature
    known = {f.name for f in fields(GenerationDefaults)}
    return GenerationDefaults(**{k: v for k, v in values.items() if k in known})


def _is_number(value: Any, kind: type) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if kind is int:
        return isinstance(value, int)
    return math.isfinite(value)


def _eos_ids(data: dict[str, Any], source: str) -> tuple[int, ...]:
    value = data.get("eos_token_id")
    if value is None:
        return ()
    ids = value if isinstance(value, list) else [value]
    if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
        raise ArtifactError(
            f"{source}: eos_token_id must be a token id or a list of token ids, got {value!r}"
        )
    return tuple(dict.fromkeys(ids))
