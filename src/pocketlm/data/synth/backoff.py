"""When to retry a teacher request: exponential backoff with jitter, or the server's Retry-After.

Pure: the caller passes the attempt number, the Retry-After header and a random source.
"""

from __future__ import annotations

import email.utils
import random
from dataclasses import dataclass

# 408 request timeout, 409 conflict (OpenAI: a transient lock), 425 too early, 429 rate limited;
# every 5xx is retried too (server errors, gateways, overload).
RETRY_STATUS = frozenset({408, 409, 425, 429})
# Every later request would fail the same way (wrong key, URL or model): the run stops.
FATAL_STATUS = frozenset({401, 403, 404})


def is_retryable(status: int) -> bool:
    """True for a status worth retrying (0: no response at all: a connection error or timeout)."""
    return status == 0 or status in RETRY_STATUS or 500 <= status <= 599


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to wait between tries of one request."""

    max_retries: int = 6  # tries after the first
    base_s: float = 1.0  # the first backoff, doubled on every retry
    cap_s: float = 60.0  # the longest backoff
    max_retry_after_s: float = 300.0  # a longer Retry-After is cut to this

    def delay(self, retry: int, retry_after_s: float | None, rng: random.Random) -> float:
        """Seconds to wait before retry number `retry` (0 = the first retry): the server's
        Retry-After (plus up to 10% jitter) when it sent one, else exponential backoff with
        jitter in [d/2, d], d = min(cap, base * 2^retry)."""
        if retry_after_s is not None:
            wait = min(retry_after_s, self.max_retry_after_s)
            return wait * (1.0 + 0.1 * rng.random())
        d = min(self.cap_s, self.base_s * 2.0**retry)
        return d / 2 + rng.random() * d / 2


def parse_retry_after(value: str | None, wall_now: float) -> float | None:
    """Seconds a Retry-After header asks for: delta-seconds or an HTTP date (None: no usable value)."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - wall_now
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)
