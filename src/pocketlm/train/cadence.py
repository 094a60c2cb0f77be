"""What happens between optimizer steps: counters, progress, metrics rows, evaluations and
checkpoints, each on its cadence (steps, fractions of the run, or seconds).

Every decision reads times that all ranks agree on (the main rank's clock, broadcast), so the
ranks evaluate, checkpoint and stop at the same step; a rank that decided alone would leave the
others waiting in a collective forever.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from pocketlm.common.cpu_load import free_cores, others_busy_cores, sample_cpu
from pocketlm.common.log import get_logger
from pocketlm.common.units import format_count
from pocketlm.train.checkpointing import save_checkpoint
from pocketlm.train.distributed import threads_per_rank
from pocketlm.train.run import Run
from pocketlm.train.step import StepStats

_log = get_logger("pocketlm.train")
EVALS_PER_RUN = 8  # without eval_every: at each eighth of the run, and at the end


def agree(values: list[float], run: Run) -> list[float]:
    """The main rank's values on every rank (as they are when running alone)."""
    if run.ctx.parallel == "none":
        return values
    import torch.distributed as tdist

    t = torch.tensor(values, dtype=torch.float64, device=run.ctx.device)
    tdist.broadcast(t, src=0)
    return t.tolist()


def start_cadence(run: Run) -> None:
    """Book-keeping before the first step (also after a resume)."""
    from pocketlm.train.peak import measured_peak_flops

    if run.task.flops_per_token and run.ctx.is_main:
        # MFU is reported against this machine's measured matmul peak in the autocast dtype.
        run.peak_flops = measured_peak_flops(run.ctx.device.type, peak_dtype(run.ctx.precision))
    run.started = run.now() - run.elapsed_s  # the probe above does not count against the budget
    progress = run.clock.progress(run.step, run.elapsed_s)
    per_run = run.config.checkpoints_per_run
    run.schedule.update(
        threads_checked_s=run.elapsed_s,
        next_eval=1 / EVALS_PER_RUN,
        last_ckpt_s=run.elapsed_s,
        # the next 1/N mark of the run after where it stands (a resumed run keeps its marks)
        next_ckpt=(math.floor(progress * per_run) + 1) / per_run if per_run else 2.0,
        window_start=run.wall_now(),
        window_tokens=0,
    )
    (run.elapsed_s,) = agree([run.measure_elapsed()], run)
    run.cpu_sample = sample_cpu()


def peak_dtype(precision: str) -> str:
    """The matmul dtype that bounds a run in `precision`."""
    return {"bf16": "bfloat16", "fp16": "float16"}.get(precision, "float32")


def after_step(run: Run, stats: StepStats, step_seconds: float) -> None:
    """Advance the counters, then log, evaluate and checkpoint where due."""
    run.step += 1
    run.tokens += run.tokens_per_step
    run.schedule["window_tokens"] += run.tokens_per_step
    run.elapsed_s, step_seconds = agree([run.measure_elapsed(), step_seconds], run)
    run.clock.observe_step(run.step, step_seconds)
    if run.bar is not None:
        if run.clock.timed:
            run.bar.total = run.clock.estimated_total(run.step, run.elapsed_s)
        run.bar.update(1)
    is_last = run.clock.finished(run.step, run.elapsed_s)
    progress = run.clock.progress(run.step, run.elapsed_s)
    config = run.config
    do_eval = run.task.evaluate is not None and (
        is_last
        or (config.eval_every and run.step % config.eval_every == 0)
        or (not config.eval_every and progress >= run.schedule["next_eval"])
    )
    if run.step % config.log_every == 0 or do_eval or run.step == 1:
        row = _row(run, stats)
        if do_eval:
            run.last_eval = _evaluate(run)
            run.schedule["next_eval"] = (math.floor(progress * EVALS_PER_RUN) + 1) / EVALS_PER_RUN
            row.update({k: round(v, 6) for k, v in run.last_eval.items()})
            run.schedule["window_start"] = run.wall_now()
        if run.metrics is not None:
            run.metrics.write(row)
        if run.bar is not None:
            val = run.last_eval.get("val_bpb")
            run.bar.set_postfix_str(
                f"loss {stats.loss:.3f} | {format_count(row['tokens_per_s'])} tok/s"
                + (f" | val bpb {val:.3f}" if val is not None else "")
            )
    if is_last:
        return
    _adapt_threads(run)
    if config.checkpoint_every:
        due = run.step % config.checkpoint_every == 0
    else:  # by time, and at each 1/N of the run so that short runs can resume too
        due = (
            run.elapsed_s - run.schedule["last_ckpt_s"] >= config.checkpoint_every_s
            or progress >= run.schedule["next_ckpt"]
        )
    if due:
        save_checkpoint(run)
        run.schedule["last_ckpt_s"] = run.elapsed_s
        per_run = config.checkpoints_per_run
        if per_run and progress >= run.schedule["next_ckpt"]:
            run.schedule["next_ckpt"] = (math.floor(progress * per_run) + 1) / per_run


def _row(run: Run, stats: StepStats) -> dict[str, Any]:
    """A metrics row for the step just taken; tokens/s over the wall-clock window since the last
    row (elapsed_s is the budget's clock: CPU seconds for a 'cpu' budget)."""
    now = run.wall_now()
    tps = run.schedule["window_tokens"] / max(1e-9, now - run.schedule["window_start"])
    run.schedule.update(window_start=now, window_tokens=0)
    row: dict[str, Any] = {
        "step": run.step,
        "tokens": run.tokens,
        "loss": round(stats.loss, 8),
        "lr": stats.lr,
        "tokens_per_s": round(tps, 1),
        "elapsed_s": round(run.elapsed_s, 2),
        "grad_norm": round(stats.grad_norm, 4),
    }
    if run.task.flops_per_token:
        row["tflops"] = round(tps * run.task.flops_per_token / 1e12, 4)
        per_rank = tps / run.ctx.dist.world_size  # each rank's share against one device's peak
        row["mfu"] = round(per_rank * run.task.flops_per_token / run.peak_flops, 4)
    return row


def _evaluate(run: Run) -> dict[str, float]:
    """The task's evaluation (on every rank); its duration is kept for the time budget."""
    assert run.task.evaluate is not None
    t0 = run.now()
    result = run.task.evaluate(run.model, run.ctx)
    (run.clock.eval_seconds,) = agree([run.now() - t0], run)
    return result


def _adapt_threads(run: Run) -> None:
    """Every threads_recheck_s, size this process's CPU threads to the cores other programs
    left free since the last check (threads waiting on a taken core stall the whole step)."""
    config = run.config
    if config.threads or not config.threads_recheck_s or run.ctx.device.type != "cpu":
        return
    if run.elapsed_s - run.schedule["threads_checked_s"] < config.threads_recheck_s:
        return
    now = sample_cpu()
    others = others_busy_cores(run.cpu_sample, now)
    run.cpu_sample, run.schedule["threads_checked_s"] = now, run.elapsed_s
    threads = threads_per_rank(0, run.ctx.dist, free_cores(others))
    if threads != torch.get_num_threads():
        _log.info(
            "other programs use %.1f cores: training on %d threads (was %d)",
            others,
            threads,
            torch.get_num_threads(),
        )
        torch.set_num_threads(threads)
