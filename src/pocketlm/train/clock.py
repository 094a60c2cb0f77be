"""How far a run is: progress in [0, 1] for the schedule and evaluations, and when to stop.

Step and token budgets count optimizer steps (deterministic: exact resume). A wall-clock budget
counts seconds: the learning-rate schedule follows elapsed time, the run stops when the time left
would only cover the final evaluation and save, and the step total shown is an estimate.
"""

from __future__ import annotations

from dataclasses import dataclass

from pocketlm.train.budget import Budget, steps_for
from pocketlm.train.config import ScheduleConfig
from pocketlm.train.schedule import lr_multiplier


@dataclass
class RunClock:
    """Budget bookkeeping for the training loop."""

    budget: Budget
    tokens_per_step: int
    schedule: ScheduleConfig
    min_lr_ratio: float
    eval_tokens: int
    step_ema: float | None = None  # seconds per optimizer step (compile/warm-up step excluded)
    eval_seconds: float = 0.0  # cost of the last evaluation

    @property
    def timed(self) -> bool:
        return self.budget.kind == "time"

    def fixed_total(self) -> int | None:
        """Total steps for step/token budgets (None for time budgets)."""
        return None if self.timed else steps_for(self.budget, self.tokens_per_step)

    def observe_step(self, step: int, seconds: float) -> None:
        """Record how long optimizer step `step` (1-based) took."""
        if step > 1:  # the first step pays for compilation and warm-up
            self.step_ema = (
                seconds if self.step_ema is None else 0.8 * self.step_ema + 0.2 * seconds
            )

    def _reserve(self) -> float:
        """Seconds kept for the final evaluation and the final save."""
        if not self.timed:
            return 0.0
        guess = (self.step_ema or 0.0) * self.eval_tokens / self.tokens_per_step / 3  # forward only
        return max(self.eval_seconds, guess) + min(3.0, 0.05 * self.budget.amount)

    def usable_seconds(self) -> float:
        """Seconds of the budget available for training steps (may be <= 0 for a tiny budget)."""
        return self.budget.amount - self._reserve()

    def progress(self, step: int, elapsed: float) -> float:
        """Fraction of the run done, in [0, 1]."""
        if self.timed:
            usable = self.usable_seconds()
            return 1.0 if usable <= 0 else min(1.0, elapsed / usable)
        return min(1.0, step / max(1, self.fixed_total() or 1))

    def finished(self, step: int, elapsed: float) -> bool:
        """True when no further optimizer step fits the budget."""
        if self.timed:
            return elapsed >= self.usable_seconds()
        return step >= (self.fixed_total() or 0)

    def estimated_total(self, step: int, elapsed: float) -> int | None:
        """Total optimizer steps this run will take (an estimate for time budgets)."""
        if not self.timed:
            return self.fixed_total()
        if self.step_ema is None:
            return None
        return step + max(0, int((self.usable_seconds() - elapsed) / self.step_ema))

    def lr_multiplier(self, step: int, elapsed: float) -> float:
        """The schedule's multiplier for the next step (time budgets: by fraction of time)."""
        if not self.timed:
            return lr_multiplier(step, self.fixed_total() or 1, self.schedule, self.min_lr_ratio)
        # Time budgets: warm-up by steps (explicit) or by time, then the same shapes over time.
        p = self.progress(step, elapsed)
        if self.schedule.warmup_steps:
            if step < self.schedule.warmup_steps:
                return (step + 1) / self.schedule.warmup_steps
        elif p < self.schedule.warmup_fraction:
            return max(p / self.schedule.warmup_fraction, 1.0 / 1000)
        resolution = 10_000  # express time as steps of a notional 10k-step run
        return lr_multiplier(
            max(int(p * resolution), 1 if not self.schedule.warmup_steps else 0),
            resolution,
            _no_warmup(self.schedule),
            self.min_lr_ratio,
        )


def _no_warmup(schedule: ScheduleConfig) -> ScheduleConfig:
    from dataclasses import replace

    return replace(schedule, warmup_steps=1)
