"""Replay: continued pretraining on a new corpus that keeps seeing a share of the original one,
so the model forgets less. Micro-batch i comes from the original data exactly when
floor((i + 1) * share) > floor(i * share): the share holds over any stretch of the run, the order
is a pure function of i, and resume restores i with both loaders' positions.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from pocketlm.common.errors import ConfigError, InputError
from pocketlm.data.loader import BatchLoader


def is_replay(index: int, share: float) -> bool:
    """Whether micro-batch `index` (0-based) comes from the replayed data at this share."""
    return math.floor((index + 1) * share) > math.floor(index * share)


class ReplayBatches:
    """Batches from `domain`, with a `share` of them from `replay` instead, resumably."""

    def __init__(self, domain: BatchLoader, replay: BatchLoader, share: float) -> None:
        if not 0.0 < share < 1.0:
            raise ConfigError(f"replay share must be in (0, 1), got {share}")
        self.domain, self.replay, self.share = domain, replay, share
        self.index = 0

    def __iter__(self) -> ReplayBatches:
        return self

    def __next__(self) -> tuple[np.ndarray, np.ndarray]:
        source = self.replay if is_replay(self.index, self.share) else self.domain
        self.index += 1
        return next(source)

    def state_dict(self) -> dict[str, Any]:
        """Both loaders' positions and the micro-batch counter."""
        return {
            "index": self.index,
            "share": self.share,
            "domain": self.domain.state_dict(),
            "replay": self.replay.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the positions; refuses a checkpoint made with another share or without replay."""
        if "replay" not in state:
            raise InputError("cannot resume: the checkpoint was made without --replay")
        if state["share"] != self.share:
            raise InputError(f"cannot resume: replay share was {state['share']}, now {self.share}")
        self.index = state["index"]
        self.domain.load_state_dict(state["domain"])
        self.replay.load_state_dict(state["replay"])
