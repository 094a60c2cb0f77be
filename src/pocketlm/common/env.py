"""The only place PocketLM reads environment variables; everything else receives values explicitly."""

from __future__ import annotations

import os
from dataclasses import dataclass


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

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_env() -> DistEnv:
    """Read RANK / LOCAL_RANK / WORLD_SIZE as set by torchrun (defaults: single process)."""
    return DistEnv(
        rank=int(os.environ.get("RANK", "0")),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        world_size=int(os.environ.get("WORLD_SIZE", "1")),
    )


def progress_disabled() -> bool:
    """Progress bars are off when POCKETLM_NO_PROGRESS is set (tests, logs)."""
    return env_flag("POCKETLM_NO_PROGRESS")


def hf_offline() -> bool:
    """True when the user asked Hugging Face libraries to stay offline."""
    return env_flag("HF_HUB_OFFLINE") or env_flag("HF_DATASETS_OFFLINE")
