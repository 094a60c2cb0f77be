"""A training run's live state, and its set-up: context, task, wrapping, optimizers, resume."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pocketlm.checkpoint.run_checkpoints import latest_checkpoint
from pocketlm.common.allocator import reuse_freed_memory
from pocketlm.common.config import to_dict
from pocketlm.common.errors import ArtifactError, ConfigError
from pocketlm.common.log import get_logger
from pocketlm.common.progress import progress_bar
from pocketlm.train.budget import parse_budget
from pocketlm.train.clock import RunClock
from pocketlm.train.compile import should_compile
from pocketlm.train.config import TrainConfig
from pocketlm.train.distributed import open_run_context, wrap_model
from pocketlm.train.metrics import MetricsLog
from pocketlm.train.optim import build_optimizers
from pocketlm.train.task import RunContext, TaskFactory, TrainTask

_log = get_logger("pocketlm.train")


@dataclass
class Run:
    """Everything the loop's phases share; counters are what a checkpoint restores."""

    ctx: RunContext
    task: TrainTask
    config: TrainConfig
    run_dir: Path
    model: nn.Module  # as trained: itself, in DDP, or sharded by FSDP2
    loss_fn: Callable[[nn.Module, Any], tuple[torch.Tensor, Any]]
    optimizers: list[torch.optim.Optimizer]
    params: list[torch.Tensor]  # trainable, each once
    names: dict[int, str]  # id(parameter) -> name
    clock: RunClock
    now: Callable[[], float]  # the budget's seconds (wall or CPU); injectable for exact tests
    command: Sequence[str] | None
    # the wall clock, for the logged tokens/s and MFU whatever clock the budget counts
    wall_now: Callable[[], float] = time.perf_counter
    step: int = 0
    tokens: int = 0
    elapsed_s: float = 0.0  # training time so far, agreed by all ranks after each step
    started: float = 0.0  # now() when elapsed_s was 0 (set when the steps begin)
    metrics: MetricsLog | None = None  # the main rank's
    bar: Any = None
    schedule: dict[str, float] = field(default_factory=dict)  # cadence book-keeping
    last_eval: dict[str, float] = field(default_factory=dict)
    peak_flops: float = 1.0
    cpu_sample: Any = None  # CPU counters at the last thread-count check (common/cpu_load.py)

    @property
    def ckpt_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    @property
    def tokens_per_step(self) -> int:
        """Input tokens one optimizer step consumes over all ranks."""
        return self.task.tokens_per_batch * self.config.grad_accum * self.ctx.dist.world_size

    def measure_elapsed(self) -> float:
        """Seconds since the run started (this rank's clock)."""
        return self.now() - self.started


def setup_run(
    factory: TaskFactory,
    config: TrainConfig,
    run_dir: Path,
    *,
    resume: bool,
    command: Sequence[str] | None,
    now: Callable[[], float] | None,
) -> Run:
    """Resolve the context, build the task for it, wrap the model, build optimizers from the
    task's roles, and restore the latest checkpoint when resuming."""
    ctx = open_run_context(
        device=config.device,
        precision=config.precision,
        parallel=config.parallel,
        threads=config.threads,
        seed=config.seed,
    )
    if ctx.device.type == "cpu" and reuse_freed_memory():
        # each step reuses the last step's pages instead of faulting them in anew
        _log.info("malloc set to keep freed memory for reuse (no page faults between steps)")
    if not resume and latest_checkpoint(run_dir / "checkpoints") is not None:
        raise ArtifactError(
            f"{run_dir} already holds a training run; pass --resume to continue it, or choose another --out"
        )
    torch.manual_seed(config.seed)
    task = factory(ctx)
    model = _trainable(task).to(ctx.device)
    if config.checkpoint_activations:
        _checkpoint_activations(model)
    model = wrap_model(model, ctx)
    named = _named_trainable(model, task)
    optimizers = build_optimizers(
        [(n, p, task.roles[n]) for n, p in named], config.optim, ctx.device
    )
    budget = parse_budget(config.budget)
    if now is None:
        now = time.process_time if budget.cpu else time.perf_counter
    tokens_per_step = task.tokens_per_batch * config.grad_accum * ctx.dist.world_size
    clock = RunClock(
        budget, tokens_per_step, config.schedule, config.optim.min_lr_ratio, config.eval_tokens
    )
    loss_fn = task.loss
    if should_compile(config.compile, budget, ctx.device):
        # The model's forward compiles; the fused LM head + loss inside it stays eager by design.
        loss_fn = torch.compile(task.loss)
        _log.info("compiling the training step with torch.compile (the first step takes ~20-40 s)")
    run = Run(
        ctx=ctx,
        task=task,
        config=config,
        run_dir=run_dir,
        model=model,
        loss_fn=loss_fn,
        optimizers=optimizers,
        params=[p for _, p in named],
        names={id(p): n for n, p in named},
        clock=clock,
        now=now,
        command=command,
    )
    if resume:
        from pocketlm.train.checkpointing import restore_latest

        resume = restore_latest(run)
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        run.metrics = MetricsLog(run_dir, resume_step=run.step if resume else None)
        if not resume:
            describe = {"task": task.name, "train": to_dict(config), **task.describe}
            (run_dir / "run_config.json").write_text(
                json.dumps(describe, indent=2) + "\n", encoding="utf-8"
            )
        run.bar = progress_bar(
            clock.fixed_total(), desc=task.name, unit="step", initial=run.step, leave=True
        )
    return run


def _checkpoint_activations(model: nn.Module) -> None:
    """Turn on layer recomputation in every decoder the trained module holds."""
    from pocketlm.model.transformer import CausalLM

    decoders = [m for m in model.modules() if isinstance(m, CausalLM)]
    if not decoders:
        raise ConfigError("checkpoint_activations: this task's model has no decoder layers")
    for decoder in decoders:
        decoder.checkpoint_activations = True
    _log.info("activation checkpointing: each layer's forward runs again in backward")


def _trainable(task: TrainTask) -> nn.Module:
    """The task's model with exactly its role-listed parameters requiring grad."""
    named = dict(task.model.named_parameters())
    unknown = sorted(set(task.roles) - set(named))
    if unknown:
        raise ConfigError(f"task {task.name!r} gives roles to unknown parameters: {unknown[:5]}")
    for name, param in named.items():
        param.requires_grad_(name in task.roles)
    return task.model


def _named_trainable(model: nn.Module, task: TrainTask) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) of the trainable parameters of the (possibly wrapped) model, in the
    unwrapped model's names: FSDP2 swaps in sharded parameters, so look them up afterwards."""
    from pocketlm.train.distributed import unwrap

    named = dict(unwrap(model).named_parameters())
    return [(name, named[name]) for name in task.roles]
