"""Training budgets: wall-clock time, CPU time, tokens or optimizer steps."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from pocketlm.common.errors import ConfigError
from pocketlm.common.units import parse_count, parse_duration


@dataclass(frozen=True)
class Budget:
    """How long to train: kind and amount (seconds, tokens or steps)."""

    kind: Literal["time", "tokens", "steps"]
    amount: float
    # Time budgets only: count this process's CPU seconds (all its threads) instead of the wall
    # clock, so a run on a shared machine gets the same compute however busy the machine is.
    cpu: bool = False

    def describe(self) -> str:
        if self.kind == "time":
            from pocketlm.common.units import format_duration

            return format_duration(self.amount) + (" of CPU time" if self.cpu else "")
        from pocketlm.common.units import format_count

        return f"{format_count(self.amount)} {self.kind}"


def parse_budget(text: str) -> Budget:
    """'5m' / '90s' -> time; '10m cpu' -> CPU time; '20M tokens' / '20Mtok' -> tokens;
    '500 steps' -> steps."""
    s = text.strip().lower()
    cpu = re.fullmatch(r"(.+?)\s*cpu", s)
    if cpu:
        wall = parse_budget(cpu.group(1))
        if wall.kind != "time":
            raise ConfigError(f"budget {text!r}: 'cpu' goes after a time, e.g. '10m cpu'")
        return Budget("time", wall.amount, cpu=True)
    m = re.fullmatch(r"(.+?)\s*(tokens?|tok|steps?)", s)
    if m:
        kind = "tokens" if m.group(2).startswith("tok") else "steps"
        amount = parse_count(m.group(1).strip())
        if amount <= 0:
            raise ConfigError(f"budget must be positive, got {text!r}")
        return Budget(kind, float(amount))
    if re.fullmatch(r"\d+(\.\d+)?", s):
        # A bare number is ambiguous (seconds? minutes? tokens?): say so instead of guessing.
        raise ConfigError(
            f"budget {text!r} has no unit: write {s}s, {s}m or {s}h for time, '{s}M tokens' or "
            f"'{s} steps'"
        )
    try:
        return Budget("time", parse_duration(s))
    except ConfigError:
        raise ConfigError(
            f"cannot read budget {text!r}: use a time (5m, 1h), tokens (20M tokens) or steps (500 steps)"
        ) from None


def steps_for(budget: Budget, tokens_per_step: int, seconds_per_step: float | None = None) -> int:
    """Optimizer steps the budget allows (time budgets need a measured seconds_per_step)."""
    if budget.kind == "steps":
        return int(budget.amount)
    if budget.kind == "tokens":
        return max(1, int(budget.amount // tokens_per_step))
    if seconds_per_step is None or seconds_per_step <= 0:
        raise ValueError("a time budget needs the measured seconds per step")
    return int(budget.amount // seconds_per_step)
