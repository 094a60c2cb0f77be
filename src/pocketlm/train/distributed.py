"""Distributed training under torchrun: the run's context, DDP / FSDP2 wrapping, reductions, and
whole (unsharded) tensors in and out of sharded models for checkpoints.

One process per device: `torchrun --nproc-per-node N -m pocketlm pretrain ...` on one machine,
`torchrun --nnodes M --node-rank R --rdzv-endpoint HOST:PORT ...` on several. gloo carries CPU
runs, NCCL GPU runs. DDP keeps a whole copy of the model per rank; FSDP2 (`fully_shard`, one
unit per block of every ModuleList, then the root) shards parameters, gradients and optimizer
state. Checkpoints hold whole tensors keyed by name, so a run resumes at any world size.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch
from torch import nn

from pocketlm.common.cpu_load import free_cores, runnable_others
from pocketlm.common.device import resolve_device, resolve_precision, usable_cores
from pocketlm.common.env import DistEnv, dist_env
from pocketlm.common.errors import ConfigError
from pocketlm.train.task import RunContext

PARALLEL = ("auto", "none", "ddp", "fsdp2")


def resolve_parallel(requested: str, dist: DistEnv) -> str:
    """ "auto" -> "ddp" under a launcher with several processes; one process alone is always
    "none" (so the same settings run on one process and under torchrun); checks the rest."""
    if requested not in PARALLEL:
        raise ConfigError(f"unknown parallel mode {requested!r}: use {', '.join(PARALLEL)}")
    if dist.world_size == 1:
        return "none"
    if requested == "auto":
        return "ddp"
    if requested == "none" and dist.world_size > 1:
        raise ConfigError(
            f"train.parallel=none with {dist.world_size} processes would train {dist.world_size} "
            "separate models; use ddp or fsdp2 (or run one process)"
        )
    return requested


def cores_for_training() -> int:
    """The usable cores other processes leave free right now (all of them on an idle machine)."""
    return free_cores(runnable_others(), usable_cores())


def threads_per_rank(requested: int, dist: DistEnv, cores: int) -> int:
    """CPU threads for this process: as requested, or (0) the usable cores shared by the local ranks."""
    return requested if requested > 0 else max(1, cores // max(1, dist.local_world_size))


def open_run_context(
    *, device: str, precision: str, parallel: str, threads: int, seed: int
) -> RunContext:
    """Resolve device, precision and the distributed context (joining the process group when
    launched by torchrun) and set this process's threads; call close_run_context at the end."""
    dist = dist_env()
    mode = resolve_parallel(parallel, dist)
    dev = resolve_device(device)
    if dev.type == "cuda" and dist.world_size > 1:
        dev = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(dev)
    n_threads = threads_per_rank(threads, dist, cores_for_training())
    if dev.type == "cpu" or threads:
        torch.set_num_threads(n_threads)
    if mode != "none":
        import torch.distributed as tdist

        if not tdist.is_initialized():
            tdist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    if dist.rank != 0:  # one voice: the other ranks only warn
        logger = logging.getLogger("pocketlm")
        logger.setLevel(max(logger.getEffectiveLevel(), logging.WARNING))
    return RunContext(dev, resolve_precision(precision, dev), dist, mode, n_threads, seed)


def close_run_context(ctx: RunContext) -> None:
    """Leave the process group (if this run joined one)."""
    if ctx.parallel != "none":
        import torch.distributed as tdist

        if tdist.is_initialized():
            tdist.destroy_process_group()


def wrap_model(model: nn.Module, ctx: RunContext) -> nn.Module:
    """The model as the ranks train it: itself alone, in DDP, or sharded in place by FSDP2."""
    if ctx.parallel == "none":
        return model
    if ctx.parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)
    fully_shard = _fully_shard()
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh(ctx.device.type, (ctx.dist.world_size,))
    for module in list(model.modules()):
        if isinstance(module, nn.ModuleList):
            for block in module:
                fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def _fully_shard():
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:  # torch < 2.6
        try:
            from torch.distributed._composable.fsdp import fully_shard
        except ImportError as exc:
            raise ConfigError("train.parallel=fsdp2 needs torch >= 2.4 (FSDP2)") from exc
    return fully_shard


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside a DDP wrapper (FSDP2 shards in place: the model itself)."""
    return (
        model.module
        if hasattr(model, "module") and type(model).__name__.endswith("DataParallel")
        else model
    )


@contextlib.contextmanager
def gradient_sync(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Backward passes inside reduce gradients across ranks only when `enabled` (gradient
    accumulation reduces once, on its last micro-batch)."""
    if enabled or not _is_distributed_model(model):
        yield
    elif hasattr(model, "no_sync"):  # DDP
        with model.no_sync():
            yield
    else:  # FSDP2
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)


def _is_distributed_model(model: nn.Module) -> bool:
    return hasattr(model, "no_sync") or hasattr(model, "set_requires_gradient_sync")


def all_reduce_sum(tensor: torch.Tensor, ctx: RunContext) -> torch.Tensor:
    """Sum a tensor over all ranks, in place (a no-op alone)."""
    if ctx.parallel != "none":
        import torch.distributed as tdist

        tdist.all_reduce(tensor, op=tdist.ReduceOp.SUM)
    return tensor


def barrier(ctx: RunContext) -> None:
    """Wait until every rank gets here (a no-op alone)."""
    if ctx.parallel != "none":
        import torch.distributed as tdist

        tdist.barrier()


def is_dtensor(t: torch.Tensor) -> bool:
    """True for a sharded (DTensor) tensor."""
    return hasattr(t, "device_mesh") and hasattr(t, "placements")


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor behind a DTensor (a collective: every rank calls it), else t itself."""
    return t.full_tensor() if is_dtensor(t) else t


def shard_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A whole tensor laid out as `like`: the same shards of the same mesh for a DTensor (each
    rank cuts its own shard, no communication), else moved to like's device and dtype."""
    full = full.to(device=like.device, dtype=like.dtype)
    if not is_dtensor(like):
        return full
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(full, like.device_mesh, like.placements, src_data_rank=None)


def full_state_dict(model: nn.Module, ctx: RunContext) -> dict[str, torch.Tensor]:
    """The whole state dict on the CPU on the main rank ({} on the others; every rank calls it)."""
    out: dict[str, torch.Tensor] = {}
    for name, value in unwrap(model).state_dict().items():
        whole = full_tensor(value)
        if ctx.is_main:
            out[name] = whole.detach().to("cpu").contiguous()
    return out


@torch.no_grad()
def load_state_into(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Copy whole tensors into the model's (possibly sharded) parameters and buffers by name."""
    targets = dict(unwrap(model).state_dict(keep_vars=True))
    unknown = sorted(set(tensors) - set(targets))
    if unknown:
        raise KeyError(f"no such tensors in the model: {unknown[:5]}")
    for name, value in tensors.items():
        target = targets[name]
        if tuple(value.shape) != tuple(target.shape):
            raise ValueError(
                f"{name}: checkpoint shape {tuple(value.shape)} != model shape {tuple(target.shape)}"
            )
        target.copy_(shard_like(value, target))
