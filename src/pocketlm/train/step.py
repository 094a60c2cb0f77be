"""One optimizer step: accumulate the task's summed losses over micro-batches, normalise the
gradients once by the number of targets over all micro-batches and ranks, clip, guard, update.

Dividing once by the global count (instead of averaging per micro-batch) weighs every target the
same when micro-batches or ranks hold different numbers of them (masked SFT turns, classes,
padding), and makes one process with batch 2B equal two processes with batch B.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from pocketlm.checkpoint.run_checkpoints import latest_checkpoint
from pocketlm.common.errors import PocketLMError
from pocketlm.train.distributed import all_reduce_sum, full_tensor, gradient_sync, is_dtensor
from pocketlm.train.optim import set_lr
from pocketlm.train.run import Run


class TrainingDiverged(PocketLMError):
    """The loss or gradient became NaN/Inf; no optimizer step and no checkpoint were made after it."""


@dataclass(frozen=True)
class StepStats:
    """What one optimizer step measured (identical on every rank)."""

    loss: float  # mean loss per target over the step's micro-batches and ranks
    targets: int  # targets the loss was averaged over
    grad_norm: float  # before clipping
    lr: float  # AdamW's learning rate used for the step


def optimizer_step(run: Run) -> StepStats:
    """Run one optimizer step over `grad_accum` micro-batches; raise TrainingDiverged on NaN/Inf."""
    config, ctx, task = run.config, run.ctx, run.task
    lr = set_lr(run.optimizers, run.clock.lr_multiplier(run.step, run.elapsed_s))
    wide = torch.float32 if ctx.device.type == "mps" else torch.float64  # MPS has no float64
    loss_sum = torch.zeros((), dtype=wide, device=ctx.device)
    count = torch.zeros((), dtype=wide, device=ctx.device)
    for i in range(config.grad_accum):
        batch = task.to_device(next(task.batches), ctx.device)
        with gradient_sync(run.model, enabled=i == config.grad_accum - 1):
            with ctx.autocast():
                loss, n = run.loss_fn(run.model, batch)
            loss.backward()
        loss_sum += loss.detach()
        count += n
    totals = all_reduce_sum(torch.stack([loss_sum, count]), ctx)  # (2,): one reduction for both
    total_loss, total_count = totals.tolist()
    # Gradients hold this rank's sum (DDP and FSDP2 average it over ranks): make them the mean
    # over every target of the step.
    _scale_gradients(run.params, ctx.dist.world_size / max(1.0, total_count))
    clip = config.optim.grad_clip if config.optim.grad_clip > 0 else float("inf")
    grad_norm = float(full_tensor(torch.nn.utils.clip_grad_norm_(run.params, clip)))
    step_loss = total_loss / max(1.0, total_count)
    if not math.isfinite(step_loss) or not math.isfinite(grad_norm):
        raise TrainingDiverged(
            f"loss became {step_loss} (gradient norm {grad_norm}) at step {run.step + 1}; "
            "stopped before the optimizer step. Last good checkpoint: "
            f"{latest_checkpoint(run.ckpt_dir) or 'none'}. Lower the learning rate "
            "(e.g. --set optim.lr=1e-3) or use fp32, then resume or restart"
        )
    for opt in run.optimizers:
        opt.step()
        opt.zero_grad(set_to_none=True)
    return StepStats(step_loss, int(total_count), grad_norm, lr)


def _scale_gradients(params: list[torch.Tensor], factor: float) -> None:
    grads = [p.grad for p in params if p.grad is not None]
    if factor == 1.0 or not grads:
        return
    if any(is_dtensor(g) for g in grads):
        for g in grads:
            g.mul_(factor)
    else:
        torch._foreach_mul_(grads, factor)
