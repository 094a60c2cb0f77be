"""The only place PocketLM reads environment variables; everything else receives values explicitly."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def env_str(name: str, default: str | None = None) -> str | None:
    """Read an environment variable (the single sanctioned entry point)."""
    return os.environ.get(name, default)


def env_flag(name: str) -> bool:
    """True when the variable is set to a truthy value (1, true, yes, on)."""
    return (os.environ.get(name) or "").strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class DistEnv:
    """What torchrun tells a process about its place in a distributed job."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1  # processes on this machine

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_env() -> DistEnv:
    """Read RANK / LOCAL_RANK / WORLD_SIZE / LOCAL_WORLD_SIZE as torchrun sets them (defaults:
    a single process); raises ValueError naming a variable that is not a valid number."""
    values = {}
    for field, name, default in (
        ("rank", "RANK", 0),
        ("local_rank", "LOCAL_RANK", 0),
        ("world_size", "WORLD_SIZE", 1),
        ("local_world_size", "LOCAL_WORLD_SIZE", 0),
    ):
        raw = os.environ.get(name, "").strip()
        try:
            values[field] = int(raw) if raw else default
        except ValueError:
            raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None
    # Without LOCAL_WORLD_SIZE (a launcher other than torchrun), assume one machine.
    values["local_world_size"] = values["local_world_size"] or values["world_size"]
    env = DistEnv(**values)
    if env.world_size < 1 or not 0 <= env.rank < env.world_size:
        raise ValueError(f"RANK={env.rank} is not within WORLD_SIZE={env.world_size}")
    return env


def progress_disabled() -> bool:
    """Progress bars are off when POCKETLM_NO_PROGRESS is set (tests, logs)."""
    return env_flag("POCKETLM_NO_PROGRESS")


def hf_offline() -> bool:
    """True when the user asked Hugging Face libraries to stay offline."""
    return env_flag("HF_HUB_OFFLINE") or env_flag("HF_DATASETS_OFFLINE")


def cache_dir() -> Path:
    """PocketLM's cache: $POCKETLM_CACHE, else $XDG_CACHE_HOME/pocketlm, else ~/.cache/pocketlm."""
    explicit = os.environ.get("POCKETLM_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "pocketlm"


def secret_from_env(name: str) -> str | None:
    """A secret (an API key) from environment variable `name`, stripped; None when unset or empty."""
    value = (os.environ.get(name) or "").strip()
    return value or None
