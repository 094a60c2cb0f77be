"""THE training loop. Pretraining, fine-tuning and distillation reuse it with another TrainTask.

Features: AdamW/Muon, warm-up + cosine/WSD, gradient accumulation, clipping, bf16 autocast,
time/token/step budgets (compile and evaluation count against time), periodic validation loss
and bits per byte, a NaN/Inf guard before the optimizer step, JSONL metrics, a progress bar with
loss, tokens/s and ETA, a loss-curve PNG, atomic checkpoints with keep-last-N, exact resume.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pocketlm.checkpoint.run_checkpoints import (
    checkpoint_name,
    latest_checkpoint,
    prune_checkpoints,
)
from pocketlm.checkpoint.train_state import load_train_state, save_train_state
from pocketlm.common.allocator import reuse_freed_memory
from pocketlm.common.config import to_dict
from pocketlm.common.device import resolve_device, resolve_precision, torch_dtype
from pocketlm.common.errors import ArtifactError, ConfigError, PocketLMError
from pocketlm.common.log import get_logger
from pocketlm.common.progress import progress_bar
from pocketlm.common.units import format_count, format_duration
from pocketlm.train.budget import parse_budget
from pocketlm.train.clock import RunClock
from pocketlm.train.config import TrainConfig
from pocketlm.train.metrics import PLOT_FILE, MetricsLog, plot_losses, read_metrics
from pocketlm.train.optim import build_optimizers, set_lr
from pocketlm.train.peak import measured_peak_flops, remeasured_peak_flops
from pocketlm.train.task import TrainTask

_log = get_logger("pocketlm.train")


class TrainingDiverged(PocketLMError):
    """The loss or gradient became NaN/Inf; no optimizer step and no checkpoint were made after it."""


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


def autocast_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16/fp16 autocast on the device, or nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch_dtype(precision))


def should_compile(mode: str, budget: Any, device: torch.device) -> bool:
    """'on'/'off' as asked; 'auto' compiles when the run is long enough to pay back compile time."""
    if mode in ("on", "off"):
        return mode == "on"
    import shutil

    if device.type == "cpu" and not (shutil.which("g++") or shutil.which("c++")):
        return False  # inductor's CPU backend needs a C++ compiler
    if device.type == "cuda":
        return budget.kind != "time" or budget.amount >= 120
    if budget.kind == "time":
        return budget.amount >= 240  # ~30 s of compilation returns 1.3-1.5x on the rest
    return budget.kind == "tokens" and budget.amount >= 50e6


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"torch_cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["torch_cuda"] = torch.cuda.get_rng_state(device)
    return state


def _restore_rng(state: dict[str, torch.Tensor], device: torch.device) -> None:
    if "torch_cpu" in state:
        torch.set_rng_state(state["torch_cpu"])
    if device.type == "cuda" and "torch_cuda" in state:
        torch.cuda.set_rng_state(state["torch_cuda"], device)


def _load_weights(model: torch.nn.Module, checkpoint: Path) -> None:
    from pocketlm.checkpoint.model_io import read_weights

    missing, unexpected = model.load_state_dict(read_weights(checkpoint), strict=False)
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise ArtifactError(
            f"{checkpoint}: weights do not match this model (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )


def train(
    task: TrainTask,
    config: TrainConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    command: Sequence[str] | None = None,
) -> RunResult:
    """Run the loop until the budget is spent; writes checkpoints, metrics, plot and `run_dir/model`."""
    run_dir = Path(run_dir)
    ckpt_dir = run_dir / "checkpoints"
    device = resolve_device(config.device)
    precision = resolve_precision(config.precision, device)
    if config.threads:
        torch.set_num_threads(config.threads)
    if device.type == "cpu" and reuse_freed_memory():
        # each step reuses the last step's pages instead of faulting them in anew
        _log.info("malloc set to keep freed memory for reuse (no page faults between steps)")
    torch.manual_seed(config.seed)
    budget = parse_budget(config.budget)
    tokens_per_step = task.tokens_per_batch * config.grad_accum
    clock = RunClock(
        budget, tokens_per_step, config.schedule, config.optim.min_lr_ratio, config.eval_tokens
    )

    model = task.model.to(device)
    optimizers = build_optimizers(task.trainable(model), config.optim, device)
    state: dict[str, Any] = {"step": 0, "tokens": 0, "elapsed_s": 0.0}
    if resume:
        _resume(task, model, optimizers, config, ckpt_dir, state, device)
    elif latest_checkpoint(ckpt_dir) is not None:
        raise ArtifactError(
            f"{run_dir} already holds a training run; pass --resume to continue it, or choose another --out"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    metrics = MetricsLog(run_dir, resume_step=state["step"] if resume else None)
    if not resume:
        describe = {"task": task.name, "train": to_dict(config), **task.describe}
        (run_dir / "run_config.json").write_text(
            json.dumps(describe, indent=2) + "\n", encoding="utf-8"
        )

    autocast = autocast_context(device, precision)
    model.train()
    loss_fn = task.loss
    if should_compile(config.compile, budget, device):
        # The model's forward compiles; the fused LM head + loss inside it stays eager by design.
        loss_fn = torch.compile(task.loss)
        _log.info("compiling the training step with torch.compile (the first step takes ~20-40 s)")

    def save_checkpoint() -> Path:
        snapshot = {
            **state,
            "loader": task.batches.state_dict(),
            "config": to_dict(config),
            "precision": precision,
        }

        def add_state(art) -> None:
            save_train_state(art.tmp, optimizers, snapshot, _rng_state(device))

        path = task.save(
            model,
            ckpt_dir / checkpoint_name(state["step"]),
            add_state,
            {"step": state["step"], "tokens": state["tokens"]},
        )
        prune_checkpoints(ckpt_dir, config.keep_checkpoints)
        return path

    # MFU is reported against this machine's measured matmul peak in the autocast dtype.
    peak_dtype = (
        "bfloat16" if precision == "bf16" else "float16" if precision == "fp16" else "float32"
    )
    peak_flops = measured_peak_flops(device.type, peak_dtype) if task.flops_per_token else 1.0
    started = time.perf_counter() - state["elapsed_s"]
    last_ckpt_time = time.perf_counter()
    window_start, window_tokens = time.perf_counter(), 0
    next_eval = (
        0.125  # evaluate at each eighth of the run (unless eval_every is set) and at the end
    )
    last_eval: dict[str, float] = {}
    params = [p for o in optimizers for g in o.param_groups for p in g["params"]]
    bar = progress_bar(
        clock.fixed_total(), desc=task.name, unit="step", initial=state["step"], leave=True
    )

    def elapsed() -> float:
        return time.perf_counter() - started

    def run_eval() -> dict[str, float]:
        if task.evaluate is None:
            return {}
        t0 = time.perf_counter()
        result = task.evaluate(model, device=device, autocast=autocast)
        clock.eval_seconds = time.perf_counter() - t0
        return result

    while not clock.finished(state["step"], elapsed()):
        lr = set_lr(optimizers, clock.lr_multiplier(state["step"], elapsed()))
        step_started = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        for _ in range(config.grad_accum):
            batch = task.to_device(next(task.batches), device)
            with autocast:
                loss, _n = loss_fn(model, batch)
            (loss / config.grad_accum).backward()
            loss_sum += loss.detach()
        grad_norm = torch.nn.utils.clip_grad_norm_(
            params, config.optim.grad_clip if config.optim.grad_clip > 0 else float("inf")
        )
        step_loss = float(loss_sum.item()) / config.grad_accum
        if not math.isfinite(step_loss) or not math.isfinite(float(grad_norm)):
            bar.close()
            latest = latest_checkpoint(ckpt_dir)
            raise TrainingDiverged(
                f"loss became {step_loss} (gradient norm {float(grad_norm)}) at step {state['step'] + 1}; "
                f"stopped before the optimizer step. Last good checkpoint: {latest or 'none'}. "
                "Lower the learning rate (e.g. --set optim.lr=1e-3) or use fp32, then resume or restart"
            )
        for opt in optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
        state["step"] += 1
        state["tokens"] += tokens_per_step
        window_tokens += tokens_per_step
        clock.observe_step(state["step"], time.perf_counter() - step_started)
        state["elapsed_s"] = elapsed()
        if clock.timed:
            bar.total = clock.estimated_total(state["step"], state["elapsed_s"])
        bar.update(1)

        is_last = clock.finished(state["step"], elapsed())
        progress = clock.progress(state["step"], elapsed())
        do_eval = task.evaluate is not None and (
            is_last
            or (config.eval_every and state["step"] % config.eval_every == 0)
            or (not config.eval_every and progress >= next_eval)
        )
        if state["step"] % config.log_every == 0 or do_eval or state["step"] == 1:
            now = time.perf_counter()
            tps = window_tokens / max(1e-9, now - window_start)
            window_start, window_tokens = now, 0
            row: dict[str, Any] = {
                "step": state["step"],
                "tokens": state["tokens"],
                "loss": round(step_loss, 6),
                "lr": lr,
                "tokens_per_s": round(tps, 1),
                "elapsed_s": round(state["elapsed_s"], 2),
                "grad_norm": round(float(grad_norm), 4),
            }
            if task.flops_per_token:
                row["tflops"] = round(tps * task.flops_per_token / 1e12, 4)
                row["mfu"] = round(tps * task.flops_per_token / peak_flops, 4)
            if do_eval:
                last_eval = run_eval()
                next_eval = (math.floor(progress * 8) + 1) / 8
                row.update({k: round(v, 6) for k, v in last_eval.items()})
                window_start = time.perf_counter()
            metrics.write(row)
            bar.set_postfix_str(
                f"loss {step_loss:.3f} | {format_count(tps)} tok/s"
                + (f" | val bpb {last_eval['val_bpb']:.3f}" if "val_bpb" in last_eval else "")
            )
        every_steps = config.checkpoint_every and state["step"] % config.checkpoint_every == 0
        every_time = (
            not config.checkpoint_every
            and time.perf_counter() - last_ckpt_time >= config.checkpoint_every_s
        )
        if (every_steps or every_time) and not is_last:
            save_checkpoint()
            last_ckpt_time = time.perf_counter()
    bar.close()
    if state["step"] == 0:
        raise ConfigError(
            f"the budget ({budget.describe()}) is too small for a single training step; raise --budget"
        )
    final_ckpt = save_checkpoint()
    rows = read_metrics(metrics.path)
    plot_losses(
        rows,
        run_dir / PLOT_FILE,
        title=f"{task.name}: {format_count(state['tokens'])} tokens in {format_duration(state['elapsed_s'])}",
    )
    mean_tps = state["tokens"] / max(1e-9, state["elapsed_s"])
    summary = {
        "steps": state["step"],
        "tokens": state["tokens"],
        "train_seconds": round(state["elapsed_s"], 2),
        "tokens_per_s": round(mean_tps, 1),
        "precision": precision,
        **last_eval,
    }
    if task.flops_per_token:
        # probed again after training: the start-up probe may have met a busy moment
        peak_flops = remeasured_peak_flops(device.type, peak_dtype)
        summary.update(
            {
                "peak_tflops_measured": round(peak_flops / 1e12, 4),
                "mfu": round(mean_tps * task.flops_per_token / peak_flops, 4),
            }
        )
    model_dir = task.save(model, run_dir / "model", None, summary, overwrite=True)
    _log.info(
        "trained %d steps, %s tokens in %s -> %s (checkpoint %s)",
        state["step"],
        format_count(state["tokens"]),
        format_duration(state["elapsed_s"]),
        model_dir,
        final_ckpt.name,
    )
    return RunResult(
        model_dir,
        run_dir,
        state["step"],
        state["tokens"],
        state["elapsed_s"],
        summary["tokens_per_s"],
        last_eval,
    )


def _resume(
    task: TrainTask,
    model: torch.nn.Module,
    optimizers: list,
    config: TrainConfig,
    ckpt_dir: Path,
    state: dict[str, Any],
    device: torch.device,
) -> None:
    """Restore weights, optimizer, loader position, counters and RNG from the latest checkpoint."""
    latest = latest_checkpoint(ckpt_dir)
    if latest is None:
        raise ArtifactError(
            f"{ckpt_dir.parent}: nothing to resume (no complete checkpoint in {ckpt_dir})"
        )
    _load_weights(model, latest)
    saved, rng = load_train_state(latest, optimizers)
    task.batches.load_state_dict(saved.pop("loader"))
    if saved.get("config") and saved["config"] != to_dict(config):
        changed = sorted(k for k in to_dict(config) if to_dict(config)[k] != saved["config"].get(k))
        _log.warning("resuming with changed settings: %s", ", ".join(changed))
    state.update({k: saved[k] for k in state if k in saved})
    _restore_rng(rng, device)
    _log.info(
        "resumed from %s (step %d, %s tokens)", latest, state["step"], format_count(state["tokens"])
    )
