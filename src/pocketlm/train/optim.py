"""Optimizers: AdamW with decoupled weight decay on matrices only; optional Muon for hidden matrices."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from pocketlm.common.device import cpu_supports_bf16
from pocketlm.train.config import OptimConfig
from pocketlm.train.muon import Muon
from pocketlm.train.task import Role


def adamw_kernel(device: torch.device) -> dict[str, bool]:
    """AdamW's fused kernel where torch has it for the device (CUDA; CPU since torch 2.4), else
    foreach. On 2 CPU cores the fused step is ~5x faster (c2: 3.4 ms vs 19 ms)."""
    try:  # recent torch checks the device only when stepping, so take one step on a probe
        probe = torch.zeros(1, device=device, requires_grad=True)
        probe.grad = torch.zeros_like(probe)
        torch.optim.AdamW([probe], fused=True).step()
    except (RuntimeError, TypeError, ValueError, NotImplementedError):
        return {"foreach": True}
    return {"fused": True}


# AdamW weight decay by role: matrices that map features decay; lookup tables, scales, biases
# and adapters (whose zero start is their prior) do not.
DECAYED_ROLES = frozenset({Role.HIDDEN, Role.HEAD})


def build_optimizers(
    params: Iterable[tuple[str, nn.Parameter, Role]], config: OptimConfig, device: torch.device
) -> list[torch.optim.Optimizer]:
    """Optimizers over (name, parameter, role) triples: with kind "muon", Muon takes the HIDDEN
    matrices and AdamW the rest; with "adamw", AdamW takes all. Tied tensors count once."""
    unique: dict[int, tuple[str, nn.Parameter, Role]] = {}
    for name, p, role in params:
        if p.requires_grad and id(p) not in unique:
            unique[id(p)] = (name, p, role)
    if not unique:
        raise ValueError("no trainable parameters")
    rest = list(unique.values())
    optimizers: list[torch.optim.Optimizer] = []
    if config.kind == "muon":
        native_bf16 = device.type == "cuda" or (device.type == "cpu" and cpu_supports_bf16())
        if config.muon_precision != "auto":
            native_bf16 = config.muon_precision == "bf16"
        # Muon orthogonalises updates of hidden 2-D matrices; everything else stays on AdamW.
        hidden = [p for _, p, role in rest if role is Role.HIDDEN and p.ndim == 2]
        if hidden:
            hidden_ids = {id(p) for p in hidden}
            rest = [t for t in rest if id(t[1]) not in hidden_ids]
            optimizers.append(
                Muon(
                    hidden,
                    lr=config.muon_lr or config.lr,
                    momentum=config.muon_momentum,
                    weight_decay=config.weight_decay,
                    ns_dtype=torch.bfloat16 if native_bf16 else torch.float32,
                )
            )
    if rest:
        decay = [p for _, p, role in rest if role in DECAYED_ROLES]
        no_decay = [p for _, p, role in rest if role not in DECAYED_ROLES]
        groups = [
            g
            for g in (
                {"params": decay, "weight_decay": config.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            )
            if g["params"]
        ]
        optimizers.append(
            torch.optim.AdamW(
                groups,
                lr=config.lr,
                betas=tuple(config.betas),
                eps=config.eps,
                **adamw_kernel(device),
            )
        )
    for opt in optimizers:
        for group in opt.param_groups:
            group["peak_lr"] = group["lr"]
    return optimizers


def set_lr(optimizers: list[torch.optim.Optimizer], multiplier: float) -> float:
    """Scale every group's peak lr by `multiplier`; returns the AdamW lr for logging."""
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["peak_lr"] * multiplier
    return optimizers[-1].param_groups[0]["lr"]
