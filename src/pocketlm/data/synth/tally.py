"""The cost/time log's totals: requests, retries, failures, tokens in and out, time, money.

Pure: built from requests.log's lines (every run's, or one run's) and the wall time.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pocketlm.common.errors import ConfigError


@dataclass(frozen=True)
class Price:
    """Money per 1,000 tokens sent (prompt) and received (completion), in the API's currency."""

    input_per_1k: float
    output_per_1k: float

    @classmethod
    def parse(cls, values: Iterable[float]) -> Price:
        """One price for both directions, or input then output."""
        values = list(values)
        if len(values) not in (1, 2) or any(v < 0 for v in values):
            raise ConfigError("--price-per-1k-tokens takes one or two prices >= 0 (input, output)")
        return cls(values[0], values[-1])

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input_per_1k + completion_tokens * self.output_per_1k) / 1000


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def totals(
    entries: Iterable[Mapping[str, Any]],
    *,
    price: Price | None = None,
    elapsed_s: float | None = None,
) -> dict[str, Any]:
    """Counts by outcome (answers and topic requests apart), HTTP requests, retries, tokens,
    seconds spent in requests, cost, and with elapsed_s the throughput."""
    answers: Counter = Counter()
    topics: Counter = Counter()
    requests = retries = prompt_tokens = completion_tokens = no_usage = 0
    request_s = 0.0
    for e in entries:
        (topics if e.get("kind") == "topic" else answers)[str(e.get("outcome"))] += 1
        attempts = _int(e.get("attempts"))
        requests += attempts
        retries += max(0, attempts - 1)
        if "prompt_tokens" in e or "completion_tokens" in e:
            prompt_tokens += _int(e.get("prompt_tokens"))
            completion_tokens += _int(e.get("completion_tokens"))
        elif e.get("outcome") != "failed":
            no_usage += 1
        request_s += float(e.get("seconds") or 0.0)
    out: dict[str, Any] = {
        "records": answers["kept"],
        "answers": dict(answers),
        "topics": dict(topics),
        "failures": answers["failed"] + topics["failed"],
        "http_requests": requests,
        "retries": retries,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "replies_without_usage": no_usage,
        "request_seconds": round(request_s, 3),
    }
    if price is not None:
        out["cost"] = round(price.cost(prompt_tokens, completion_tokens), 6)
    if elapsed_s is not None:
        out["elapsed_s"] = round(elapsed_s, 3)
        if elapsed_s > 0:
            out["records_per_s"] = round(answers["kept"] / elapsed_s, 3)
            out["completion_tokens_per_s"] = round(completion_tokens / elapsed_s, 1)
    return out


def format_totals(t: Mapping[str, Any]) -> str:
    """One line for the terminal."""
    answers = t.get("answers", {})
    dropped = ", ".join(
        f"{n} {name.replace('_', ' ')}" for name, n in sorted(answers.items()) if name != "kept"
    )
    text = f"{t['records']:,} records" + (f" ({dropped})" if dropped else "")
    text += f"; {t['http_requests']:,} requests, {t['retries']:,} retries"
    text += f"; {t['prompt_tokens']:,} tokens in, {t['completion_tokens']:,} out"
    if "elapsed_s" in t:
        text += f"; {t['elapsed_s']:.1f} s"
        if "records_per_s" in t:
            text += f" ({t['records_per_s']:.2f} records/s, {t['completion_tokens_per_s']:.0f} tokens/s)"
    if "cost" in t:
        text += f"; cost {t['cost']:.4f}"
    return text
