"""A model's final hidden states as its forward computes them: the output of the final norm (an
identity in post-norm encoders), which the LM head, the classifier's pooling or an encoder's
output reads. Taken by a forward hook, so the one forward is not duplicated to expose them
(DistilBERT-style distillation aligns a student's states with its teacher's)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from pocketlm.model.transformer import CausalLM


class FinalHidden:
    """A model's final hidden states (B, T, dim), the final norm's output that its head reads,
    kept by a forward hook while `run` computes, and only then (a language model's forward at
    output_positions norms those alone: (B, dim))."""

    def __init__(self, model: CausalLM) -> None:
        self._on = False
        self._value: torch.Tensor | None = None
        self.handle = model.model.norm.register_forward_hook(self._keep)

    def _keep(self, module: nn.Module, args: Any, output: torch.Tensor) -> None:
        if self._on:
            self._value = output

    def run(self, forward: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(forward()'s result, the final hidden states it computed)."""
        self._on, self._value = True, None
        try:
            out = forward()
        finally:
            self._on = False
        hidden, self._value = self._value, None
        if hidden is None:
            raise RuntimeError("the forward never reached the model's final norm")
        return out, hidden
