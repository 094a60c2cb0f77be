"""Learning-rate schedules as pure functions of the step."""

from __future__ import annotations

import math

from pocketlm.train.config import ScheduleConfig


def warmup_steps(config: ScheduleConfig, total_steps: int) -> int:
    """Explicit warm-up steps, or a fraction of the run (at least 1)."""
    return config.warmup_steps or max(1, int(config.warmup_fraction * total_steps))


def lr_multiplier(step: int, total_steps: int, config: ScheduleConfig, min_ratio: float) -> float:
    """Multiplier of the peak lr at optimizer step `step` (0-based) of `total_steps`."""
    total_steps = max(1, total_steps)
    warm = min(warmup_steps(config, total_steps), total_steps)
    if step < warm:
        return (step + 1) / warm
    if config.kind == "constant":
        return 1.0
    if config.kind == "cosine":
        progress = min(1.0, (step - warm) / max(1, total_steps - warm))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    # WSD: stable at the peak, then linear decay over the last decay_fraction of the run.
    decay_start = total_steps - int(config.decay_fraction * total_steps)
    if step < decay_start:
        return 1.0
    progress = min(1.0, (step - decay_start + 1) / max(1, total_steps - decay_start))
    return 1.0 - (1.0 - min_ratio) * progress


def decay_start_step(total_steps: int, config: ScheduleConfig) -> int:
    """First step whose lr depends on total_steps (time budgets may re-estimate total before it)."""
    if config.kind == "wsd":
        return total_steps - int(config.decay_fraction * total_steps)
    if config.kind == "constant":
        return total_steps
    return warmup_steps(config, total_steps)
