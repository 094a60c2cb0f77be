"""The server's Prometheus metrics: request counts, latencies, time to first token, tokens, queue.

A tiny in-process registry rendering the Prometheus text exposition format (version 0.0.4); no
client library needed. Route labels come from a fixed set, so odd URLs cannot grow the series.
"""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict
from dataclasses import dataclass, field

from pocketlm.engine.scheduler import SchedulerStats

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass
class Histogram:
    """Cumulative-bucket histogram of seconds."""

    buckets: tuple[float, ...] = LATENCY_BUCKETS_S
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    n: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.buckets) + 1)  # the last one is +Inf

    def observe(self, seconds: float) -> None:
        """Add one observation."""
        self.counts[bisect.bisect_left(self.buckets, seconds)] += 1
        self.total += seconds
        self.n += 1

    def lines(self, name: str, labels: str) -> list[str]:
        """Exposition lines: _bucket{le=...}, _sum, _count."""
        sep = "," if labels else ""
        out, running = [], 0
        for bound, count in zip((*self.buckets, float("inf")), self.counts):
            running += count
            le = "+Inf" if bound == float("inf") else repr(bound)
            out.append(f'{name}_bucket{{{labels}{sep}le="{le}"}} {running}')
        wrap = f"{{{labels}}}" if labels else ""
        out.append(f"{name}_sum{wrap} {self.total!r}")
        out.append(f"{name}_count{wrap} {self.n}")
        return out


class ServerMetrics:
    """Thread-safe counters and histograms for /metrics."""

    def __init__(self, routes: tuple[str, ...]) -> None:
        self.routes = routes
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, int], int] = defaultdict(int)
        self._latency: dict[str, Histogram] = {}
        self._ttft = Histogram()
        self._rejected = 0

    def route_label(self, path: str) -> str:
        """The route a path counts under ("other" for unknown paths)."""
        if path in self.routes:
            return path
        if path.startswith("/v1/models/"):
            return "/v1/models/{model}"
        return "other"

    def observe_request(self, path: str, status: int, seconds: float) -> None:
        """Count one finished request and its latency."""
        route = self.route_label(path)
        with self._lock:
            self._requests[(route, status)] += 1
            self._latency.setdefault(route, Histogram()).observe(seconds)

    def observe_first_token(self, seconds: float) -> None:
        """Record one sequence's time to first token."""
        with self._lock:
            self._ttft.observe(seconds)

    def observe_rejected(self) -> None:
        """Count a request refused because the queue was full."""
        with self._lock:
            self._rejected += 1

    def render(self, stats: SchedulerStats) -> str:
        """The Prometheus text exposition of everything."""
        lines = [
            "# HELP pocketlm_requests_total HTTP requests by route and status code.",
            "# TYPE pocketlm_requests_total counter",
        ]
        with self._lock:
            for (route, status), count in sorted(self._requests.items()):
                lines.append(
                    f'pocketlm_requests_total{{route="{route}",status="{status}"}} {count}'
                )
            lines += [
                "# HELP pocketlm_request_duration_seconds Time from request to the last byte sent.",
                "# TYPE pocketlm_request_duration_seconds histogram",
            ]
            for route, hist in sorted(self._latency.items()):
                lines += hist.lines("pocketlm_request_duration_seconds", f'route="{route}"')
            lines += [
                "# HELP pocketlm_time_to_first_token_seconds Time from submission to a sequence's first token.",
                "# TYPE pocketlm_time_to_first_token_seconds histogram",
                *self._ttft.lines("pocketlm_time_to_first_token_seconds", ""),
                "# HELP pocketlm_rejected_requests_total Requests refused with 503 (queue full).",
                "# TYPE pocketlm_rejected_requests_total counter",
                f"pocketlm_rejected_requests_total {self._rejected}",
            ]
        gauges = (
            ("prompt_tokens_total", "counter", "Prompt tokens prefilled.", stats.prompt_tokens),
            ("generated_tokens_total", "counter", "Tokens generated.", stats.generated_tokens),
            ("sequences_finished_total", "counter", "Sequences ended.", stats.finished),
            ("queue_length", "gauge", "Sequences waiting for a slot.", stats.queued),
            ("active_slots", "gauge", "Slots generating now.", stats.active),
            ("slots", "gauge", "Slots (sequences decoded together).", stats.slots),
        )
        for name, kind, text, value in gauges:
            lines += [
                f"# HELP pocketlm_{name} {text}",
                f"# TYPE pocketlm_{name} {kind}",
                f"pocketlm_{name} {value}",
            ]
        return "\n".join(lines) + "\n"
