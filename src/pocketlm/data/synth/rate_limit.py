"""A shared requests-per-minute limit: request starts spaced evenly, across all worker threads."""

from __future__ import annotations

import threading

from pocketlm.common.errors import ConfigError
from pocketlm.data.synth.clock import Clock


class RateLimiter:
    """At most `per_minute` request starts a minute, one every 60/per_minute seconds (no bursts)."""

    def __init__(self, per_minute: float, clock: Clock) -> None:
        if not per_minute > 0:
            raise ConfigError(f"--requests-per-minute must be above 0, not {per_minute}")
        self.interval_s = 60.0 / per_minute
        self.clock = clock
        self._next = float("-inf")
        self._lock = threading.Lock()

    def acquire(self) -> float:
        """Wait for this request's turn; the seconds waited."""
        with self._lock:  # reserve a slot, then sleep outside the lock
            now = self.clock.now()
            start = max(now, self._next)
            self._next = start + self.interval_s
        wait = start - now
        if wait > 0:
            self.clock.sleep(wait)
        return wait
