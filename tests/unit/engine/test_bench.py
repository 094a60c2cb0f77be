"""engine/bench's timing pieces with a fake backend and an injected clock."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pocketlm.engine.bench import BenchTarget, speed_summary, timed_round


class FakeBackend:
    """Logits that always pick token 3; every call advances the fake clock by its cost."""

    name = "fake"

    def __init__(self, clock: list[float]) -> None:
        self.clock, self.calls = clock, []

    def release(self, slot: int) -> None:
        self.calls.append(("release", slot))

    def prefill(self, slot: int, tokens: list[int]) -> np.ndarray:
        self.clock[0] += 0.5
        self.calls.append(("prefill", len(tokens)))
        return np.eye(8)[3]

    def decode(self, slots, tokens) -> np.ndarray:
        self.clock[0] += 0.25
        self.calls.append(("decode", tokens[0]))
        return np.eye(8)[3][None]


def test_timed_round_times_one_prefill_and_exactly_new_tokens_decodes():
    clock = [0.0]
    backend = FakeBackend(clock)
    target = BenchTarget(Path("m"), backend, [1, 2, 3, 4], 4, 0.0)
    assert timed_round(target, now=lambda: clock[0]) == (0.5, 1.0)
    assert backend.calls[0] == ("release", 0) and backend.calls[1] == ("prefill", 4)
    assert backend.calls[2:] == [("decode", 3)] * 4  # greedy: feeds back the argmax


def test_speed_summary_medians_and_cold_time_to_first_token():
    r = speed_summary(128, 64, 2.0, [0.5, 0.25, 1.0], [1.0, 2.0, 0.5])
    assert r["time_to_first_token_s"] == 2.5  # load + the first (cold) prefill
    assert r["prefill_tokens_per_s"] == 256.0 and r["decode_tokens_per_s"] == 64.0
    assert r["load_s"] == 2.0
