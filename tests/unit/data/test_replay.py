"""Replay: the share of original-data batches holds over any stretch, the order is a pure
function of the batch index, and a resumed mix continues exactly."""

from __future__ import annotations

import numpy as np
import pytest

from pocketlm.common.errors import ConfigError, InputError
from pocketlm.data.replay import ReplayBatches, is_replay


@pytest.mark.parametrize("share", [0.1, 0.25, 1 / 3, 0.5, 0.9])
def test_the_share_holds_over_any_window(share):
    picks = [is_replay(i, share) for i in range(1000)]
    assert sum(picks) == int(1000 * share)
    for start in range(0, 900, 37):  # any 100 consecutive batches: within one of the share
        assert abs(sum(picks[start : start + 100]) - 100 * share) <= 1


class _Counter:
    def __init__(self, tag: int) -> None:
        self.tag, self.n = tag, 0

    def __next__(self):
        self.n += 1
        return np.array([self.tag]), np.array([self.n])

    def state_dict(self):
        return {"n": self.n}

    def load_state_dict(self, state):
        self.n = state["n"]


def test_a_resumed_mix_continues_exactly():
    full = ReplayBatches(_Counter(0), _Counter(1), 0.3)
    reference = [tuple(int(a[0]) for a in next(full)) for _ in range(40)]
    first = ReplayBatches(_Counter(0), _Counter(1), 0.3)
    head = [tuple(int(a[0]) for a in next(first)) for _ in range(17)]
    resumed = ReplayBatches(_Counter(0), _Counter(1), 0.3)
    resumed.load_state_dict(first.state_dict())
    tail = [tuple(int(a[0]) for a in next(resumed)) for _ in range(23)]
    assert head + tail == reference
    with pytest.raises(InputError, match="share was 0.3"):
        ReplayBatches(_Counter(0), _Counter(1), 0.5).load_state_dict(first.state_dict())
    with pytest.raises(InputError, match="without --replay"):
        resumed.load_state_dict({"n": 3})
    with pytest.raises(ConfigError):
        ReplayBatches(_Counter(0), _Counter(1), 1.0)
