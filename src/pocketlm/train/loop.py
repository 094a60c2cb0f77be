"""THE training loop. Every task (pretrain, SFT, LoRA, classify, distill) and every scale (one CPU
process, N GPUs on M machines under torchrun) runs through it; a task is a TrainTask factory.

The loop is four phases: set-up (train/run.py: context, task, wrapping, optimizers, resume),
one optimizer step (train/step.py), the cadence between steps (train/cadence.py: metrics,
evaluation, checkpoints) and finish (below: last checkpoint, plot, final model). Time comes from
an injectable clock, so budgets are exact in tests.

Features: AdamW/Muon, warm-up + cosine/WSD, gradient accumulation, clipping, bf16 autocast,
time/token/step budgets (compile and evaluation count against time), periodic validation, a
NaN/Inf guard before the optimizer step, JSONL metrics, a progress bar with loss, tokens/s and
ETA, a loss-curve PNG, atomic checkpoints with keep-last-N, exact resume at any world size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pocketlm.checkpoint.run_checkpoints import latest_checkpoint
from pocketlm.common.errors import ConfigError, OutOfSpaceError, is_out_of_space
from pocketlm.common.log import get_logger
from pocketlm.common.units import format_count, format_duration
from pocketlm.train.cadence import after_step, peak_dtype, start_cadence
from pocketlm.train.checkpointing import save_checkpoint, save_final
from pocketlm.train.config import TrainConfig
from pocketlm.train.distributed import close_run_context, unwrap
from pocketlm.train.metrics import PLOT_FILE, plot_losses, read_metrics
from pocketlm.train.run import Run, setup_run
from pocketlm.train.step import TrainingDiverged, optimizer_step
from pocketlm.train.task import TaskFactory

__all__ = ["RunResult", "TrainingDiverged", "train"]
_log = get_logger("pocketlm.train")


@dataclass
class RunResult:
    """Where a run ended and what it measured."""

    model_dir: Path
    run_dir: Path
    steps: int
    tokens: int
    seconds: float
    tokens_per_s: float
    final: dict[str, float]


def train(
    factory: TaskFactory,
    config: TrainConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    command: Sequence[str] | None = None,
    now: Callable[[], float] | None = None,
) -> RunResult:
    """Build the task for this process's context and train it until the budget is spent;
    writes checkpoints, metrics, the loss plot and `run_dir/model` (from the main rank).
    `now` (seconds) defaults to the wall clock, or this process's CPU time for a 'cpu' budget."""
    run = setup_run(factory, config, Path(run_dir), resume=resume, command=command, now=now)
    try:
        done = _already_finished(run)
        if done is not None:
            return done
        start_cadence(run)
        while not run.clock.finished(run.step, run.elapsed_s):
            started = run.now()
            stats = optimizer_step(run)
            after_step(run, stats, run.now() - started)
        return finish(run)
    except Exception as exc:  # safetensors, numpy and matplotlib wrap I/O errors their own way
        if not (isinstance(exc, OutOfSpaceError) or is_out_of_space(exc)):
            raise
        raise OutOfSpaceError(
            f"out of disk space while training in {run.run_dir}: the last good checkpoint, "
            f"{latest_checkpoint(run.ckpt_dir) or '(none yet)'}, is intact; free some space, then "
            "run the same command with --resume"
        ) from exc
    finally:
        if run.bar is not None:
            run.bar.close()
        close_run_context(run.ctx)


def _already_finished(run: Run) -> RunResult | None:
    """The run's result when a resumed run has nothing left to do: its budget is spent and its
    final model holds this very step (resuming it again is then immediate, and changes nothing)."""
    from pocketlm.common.errors import ArtifactError
    from pocketlm.common.manifest import read_manifest

    if run.step == 0 or not run.clock.finished(run.step, run.elapsed_s):
        return None
    model_dir = run.run_dir / "model"
    try:
        summary = read_manifest(model_dir)["summary"]
    except ArtifactError:
        return None
    if summary.get("steps") != run.step:
        return None
    final = {k: v for k, v in summary.items() if k.startswith(("val_", "end_of_turn_"))}
    _log.info("%s already finished at step %d: nothing to resume", run.run_dir, run.step)
    return RunResult(
        model_dir, run.run_dir, run.step, run.tokens, run.elapsed_s,
        summary.get("tokens_per_s", 0.0), final,
    )  # fmt: skip


def finish(run: Run) -> RunResult:
    """The last checkpoint, the loss plot and the final model, with the run's summary."""
    if run.bar is not None:
        run.bar.close()
    if run.step == 0:
        raise ConfigError(
            f"the budget ({run.clock.budget.describe()}) is too small for a single training step; raise --budget"
        )
    final_ckpt = save_checkpoint(run)
    finished = run.task.finish(unwrap(run.model), run.ctx) if run.task.finish else {}
    mean_tps = run.tokens / max(1e-9, run.elapsed_s)
    summary = {
        "steps": run.step,
        "tokens": run.tokens,
        "train_seconds": round(run.elapsed_s, 2),
        "tokens_per_s": round(mean_tps, 1),
        **({"budget_clock": "cpu"} if run.clock.budget.cpu else {}),  # the two above: CPU time
        "precision": run.ctx.precision,
        "world_size": run.ctx.dist.world_size,
        **run.last_eval,
        **finished,
    }
    if run.ctx.is_main:
        plot_losses(
            read_metrics(run.metrics.path),
            run.run_dir / PLOT_FILE,
            title=f"{run.task.name}: {format_count(run.tokens)} tokens in {format_duration(run.elapsed_s)}",
        )
        if run.task.flops_per_token:
            from pocketlm.train.peak import remeasured_peak_flops

            # probed again after training: the start-up probe may have met a busy moment
            peak = remeasured_peak_flops(run.ctx.device.type, peak_dtype(run.ctx.precision))
            per_rank = mean_tps / run.ctx.dist.world_size
            summary["peak_tflops_measured"] = round(peak / 1e12, 4)
            summary["mfu"] = round(per_rank * run.task.flops_per_token / peak, 4)
    model_dir = save_final(run, summary)
    _log.info(
        "trained %d steps, %s tokens in %s -> %s (checkpoint %s)",
        run.step,
        format_count(run.tokens),
        format_duration(run.elapsed_s),
        model_dir,
        final_ckpt.name if final_ckpt else "-",
    )
    return RunResult(
        model_dir,
        run.run_dir,
        run.step,
        run.tokens,
        run.elapsed_s,
        summary["tokens_per_s"],
        {**run.last_eval, **finished},
    )
