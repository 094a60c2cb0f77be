"""When the training step pays back torch.compile's start-up time."""

from __future__ import annotations

import shutil

import torch

from pocketlm.train.budget import Budget


def should_compile(mode: str, budget: Budget, device: torch.device) -> bool:
    """'on'/'off' as asked; 'auto' compiles when the run is long enough to pay back compile time."""
    if mode in ("on", "off"):
        return mode == "on"
    if device.type == "cpu" and not (shutil.which("g++") or shutil.which("c++")):
        return False  # inductor's CPU backend needs a C++ compiler
    if device.type == "cuda":
        return budget.kind != "time" or budget.amount >= 120
    if budget.kind == "time":
        return budget.amount >= 240  # ~30 s of compilation returns 1.3-1.5x on the rest
    return budget.kind == "tokens" and budget.amount >= 50e6
