"""What the one training loop trains: a TrainTask bundles the model, its batches, its loss, the
roles of its trainable parameters, its evaluation and what its checkpoints hold.

A task is built by a factory, `factory(RunContext) -> TrainTask`, after the loop has resolved the
device, the precision and the distributed context, so a task never guesses them. The loop knows
nothing of what a task trains: it sums the task's losses and target counts, normalises once per
optimizer step, builds optimizers from parameter roles and asks the task to save and restore.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from pocketlm.common.env import DistEnv


class ResumableBatches(Protocol):
    """An endless source of this rank's micro-batches whose position is a JSON-able state."""

    def __next__(self) -> Any: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Role(StrEnum):
    """What a trainable parameter is; the optimizer settings follow from it (train/optim.py)."""

    HIDDEN = "hidden"  # 2-D weights inside the network: Muon where chosen, else AdamW + decay
    EMBEDDING = "embedding"  # token embeddings (and a head tied to them): AdamW, no decay
    NORM = "norm"  # norm scales and every bias: AdamW, no decay
    ADAPTER = "adapter"  # LoRA and other adapter weights: AdamW, no decay
    HEAD = "head"  # output heads (an untied LM head, a classifier): AdamW + decay


@dataclass(frozen=True)
class RunContext:
    """Where and how a run computes, resolved before its task is built."""

    device: torch.device
    precision: str  # "fp32" | "bf16" | "fp16"
    dist: DistEnv
    parallel: str  # "none" | "ddp" | "fsdp2"
    threads: int  # CPU threads of this process
    seed: int

    @property
    def is_main(self) -> bool:
        """True on the process that writes files (rank 0)."""
        return self.dist.rank == 0

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16/fp16 autocast on the device, or nothing for fp32."""
        return autocast_context(self.device, self.precision)


def arrays_to_device(batch: dict[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
    """A host batch of numpy arrays as tensors on the device (a TrainTask's to_device)."""
    return {k: torch.from_numpy(v).to(device, non_blocking=True) for k, v in batch.items()}


def autocast_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16/fp16 autocast on the device, or nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return torch.autocast(device_type=device.type, dtype=dtype)


@dataclass(frozen=True)
class SaveRequest:
    """What the loop hands a task to write one artifact (a checkpoint or the final model)."""

    out: Path
    state: dict[str, torch.Tensor]  # the whole model's state dict, unsharded, on the CPU
    summary: dict[str, Any]
    add_files: Callable[[Any], None] | None = None  # adds the loop's train state (checkpoints)
    overwrite: bool = False


@dataclass
class TrainTask:
    """One kind of training (pretrain, SFT, LoRA, classify, distill) as data for the loop."""

    name: str
    model: nn.Module
    batches: ResumableBatches
    # loss(model, batch on device) -> (sum of the per-target losses, number of targets); the
    # loop divides by the count over all micro-batches and ranks, so every target weighs the same
    loss: Callable[[nn.Module, Any], tuple[torch.Tensor, torch.Tensor | int]]
    # move a host batch to the device
    to_device: Callable[[Any, torch.device], Any]
    tokens_per_batch: int  # input tokens in one micro-batch of one rank (for tokens/s)
    # trainable parameter name (as in model.named_parameters()) -> role; the rest is frozen
    roles: dict[str, Role]
    # write SaveRequest.state's share that this task keeps (all weights, or only adapters)
    save: Callable[[SaveRequest], Path]
    # checkpoint dir -> tensors to restore into the model (names as in model.state_dict())
    load: Callable[[Path], dict[str, torch.Tensor]]
    # evaluate(model, ctx) -> {"val_loss": ..., ...}; called on every rank
    evaluate: Callable[[nn.Module, RunContext], dict[str, float]] | None = None
    # finish(model, ctx) -> metrics measured once after the last step (SFT's end-of-turn rate);
    # called on every rank with the unwrapped model, they join the final model's summary
    finish: Callable[[nn.Module, RunContext], dict[str, float]] | None = None
    flops_per_token: float = 0.0  # training FLOPs per token, for MFU
    describe: dict[str, Any] = field(default_factory=dict)  # goes into manifests and the report


TaskFactory = Callable[[RunContext], TrainTask]
