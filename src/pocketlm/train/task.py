"""What the one training loop trains: a task bundles model, batches, loss, evaluation and saving."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn


class ResumableBatches(Protocol):
    """An endless batch source whose position is a JSON-able state."""

    def __next__(self) -> Any: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class TrainTask:
    """One kind of training (pretrain, SFT, LoRA, classify, distill) as data for the loop."""

    name: str
    model: nn.Module
    batches: ResumableBatches
    # loss(model, batch on device) -> (mean loss over the batch's targets, number of targets)
    loss: Callable[[nn.Module, Any], tuple[torch.Tensor, int]]
    # move a host batch to the device
    to_device: Callable[[Any, torch.device], Any]
    tokens_per_batch: int
    # save(model, out_dir, extra_writer, summary) -> artifact path; extra_writer adds train state
    save: Callable[..., Path]
    # evaluate(model, device, autocast) -> {"val_loss": ..., "val_bpb": ...}
    evaluate: Callable[..., dict[str, float]] | None = None
    trainable: Callable[[nn.Module], list[tuple[str, nn.Parameter]]] = field(
        default=lambda m: list(m.named_parameters())
    )
    flops_per_token: float = 0.0  # training FLOPs per token, for MFU
    describe: dict[str, Any] = field(default_factory=dict)  # goes into manifests and the report
