"""A run's checkpoints: what the task keeps of the model, plus the loop's train state (optimizer
moments by parameter name, counters, data position, RNG), written by the main rank; and resume.

Every rank takes part in gathering sharded tensors; only the main rank writes; all ranks wait
for the write before going on, so a checkpoint on storage every rank reads can be resumed at
once, at any world size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pocketlm.checkpoint.run_checkpoints import (
    checkpoint_name,
    latest_checkpoint,
    prune_checkpoints,
)
from pocketlm.checkpoint.train_state import load_train_state, save_train_state
from pocketlm.common.config import to_dict
from pocketlm.common.errors import ArtifactError
from pocketlm.common.log import get_logger
from pocketlm.common.units import format_count
from pocketlm.train.distributed import barrier, full_state_dict, load_state_into
from pocketlm.train.opt_state import load_named_optimizer_state, named_optimizer_state
from pocketlm.train.run import Run
from pocketlm.train.task import SaveRequest

_log = get_logger("pocketlm.train")


def save_checkpoint(run: Run) -> Path | None:
    """Write checkpoints/step-N (main rank; None elsewhere) and keep the newest few. A complete
    checkpoint of this very step (a run resumed after its last one) is kept as it is."""
    existing = run.ckpt_dir / checkpoint_name(run.step)
    if (existing / "manifest.json").is_file():
        return existing if run.ctx.is_main else None
    state = full_state_dict(run.model, run.ctx)
    optimizer_states = [
        named_optimizer_state(opt, run.names, keep=run.ctx.is_main) for opt in run.optimizers
    ]
    path = None
    if run.ctx.is_main:
        snapshot = {
            "step": run.step,
            "tokens": run.tokens,
            "elapsed_s": run.elapsed_s,
            "loader": run.task.batches.state_dict(),
            "config": to_dict(run.config),
            "precision": run.ctx.precision,
            "world_size": run.ctx.dist.world_size,
        }
        rng = _rng_state(run.ctx.device)

        def add_train_state(art: Any) -> None:
            save_train_state(art.tmp, optimizer_states, snapshot, rng)

        path = run.task.save(
            SaveRequest(
                run.ckpt_dir / checkpoint_name(run.step),
                state,
                {"step": run.step, "tokens": run.tokens},
                add_train_state,
            )
        )
        prune_checkpoints(run.ckpt_dir, run.config.keep_checkpoints)
    barrier(run.ctx)
    return path


def save_final(run: Run, summary: dict[str, Any]) -> Path:
    """Write run_dir/model (main rank) and return its path on every rank."""
    state = full_state_dict(run.model, run.ctx)
    out = run.run_dir / "model"
    if run.ctx.is_main:
        out = run.task.save(SaveRequest(out, state, summary, None, overwrite=True))
    barrier(run.ctx)
    return out


def restore_latest(run: Run) -> bool:
    """Restore weights (what the task keeps), optimizer moments, data position, counters and
    RNG from the newest complete checkpoint; False when the run has none yet (killed before
    its first checkpoint: it starts from the beginning, which is where it was)."""
    if not run.run_dir.is_dir():
        raise ArtifactError(
            f"{run.run_dir}: nothing to resume (no such run directory); drop --resume to start it"
        )
    latest = latest_checkpoint(run.ckpt_dir)
    if latest is None:
        _log.info("%s has no checkpoint yet: starting the run from its beginning", run.run_dir)
        return False
    load_state_into(run.model, run.task.load(latest))
    saved, optimizer_states, rng = load_train_state(latest)
    if len(optimizer_states) != len(run.optimizers):
        raise ArtifactError(
            f"{latest}: saved {len(optimizer_states)} optimizers, this run has {len(run.optimizers)}"
        )
    for opt, opt_state in zip(run.optimizers, optimizer_states, strict=True):
        load_named_optimizer_state(opt, opt_state, run.names, str(latest))
    run.task.batches.load_state_dict(saved["loader"])
    now_config = to_dict(run.config)
    if saved.get("config") and saved["config"] != now_config:
        changed = sorted(k for k in now_config if now_config[k] != saved["config"].get(k))
        _log.warning("resuming with changed settings: %s", ", ".join(changed))
    _note_world_change(saved, run)
    run.step, run.tokens = int(saved["step"]), int(saved["tokens"])
    run.elapsed_s = float(saved["elapsed_s"])
    _restore_rng(rng, run.ctx.device)
    _log.info("resumed from %s (step %d, %s tokens)", latest, run.step, format_count(run.tokens))
    return True


def _note_world_change(saved: dict[str, Any], run: Run) -> None:
    """Say so when the run continues on another number of processes or another global batch."""
    world = int(saved.get("world_size", 1))
    if world == run.ctx.dist.world_size:
        return
    _log.info("resuming a run of %d processes on %d", world, run.ctx.dist.world_size)
    old = saved.get("config", {})
    old_tokens = old.get("batch_size", 0) * old.get("grad_accum", 1) * world
    now_tokens = run.config.batch_size * run.config.grad_accum * run.ctx.dist.world_size
    if old_tokens and old_tokens != now_tokens:
        _log.warning(
            "the global batch changes from %d to %d sequences per step (batch size x gradient "
            "accumulation x processes); keep it to continue the same run",
            old_tokens,
            now_tokens,
        )


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
