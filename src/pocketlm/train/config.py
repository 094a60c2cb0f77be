"""Training configuration: optimizer, schedule, batch, budget, evaluation, checkpoints, precision."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class OptimConfig:
    """AdamW (and Muon for hidden matrices when kind='muon')."""

    kind: Literal["adamw", "muon"] = "muon"  # Muon for hidden matrices, AdamW for the rest
    lr: float = 3e-3
    min_lr_ratio: float = 0.1  # final lr = lr * min_lr_ratio
    betas: tuple[float, ...] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.1  # on matrices only; norms, biases and embeddings are not decayed
    grad_clip: float = 1.0  # 0 turns clipping off
    muon_lr: float = 0.0  # 0 = the same as lr (Muon's update RMS is matched to AdamW's)
    muon_momentum: float = 0.95
    # Newton-Schulz precision: "auto" = bf16 where bf16 matmuls are native (CUDA, AVX512-BF16/AMX)
    muon_precision: Literal["auto", "fp32", "bf16"] = "auto"

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError("optim.lr must be > 0")
        if len(self.betas) != 2:
            raise ValueError("optim.betas needs two values")


@dataclass(frozen=True)
class ScheduleConfig:
    """Warm-up, then cosine decay or warmup-stable-decay (WSD)."""

    kind: Literal["cosine", "wsd", "constant"] = "wsd"
    warmup_steps: int = 0  # 0 = warmup_fraction of the run
    warmup_fraction: float = 0.02
    decay_fraction: float = 0.3  # WSD: the last 30% of steps decay to min_lr


@dataclass(frozen=True)
class TrainConfig:
    """Everything one run of the training loop needs besides the task."""

    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    batch_size: int = 16  # sequences per micro-batch
    grad_accum: int = 1
    ctx: int = 256
    budget: str = "5m"  # wall-clock ("5m", "1h"), tokens ("20M tokens") or steps ("1000 steps")
    eval_every: int = 0  # steps between evaluations; 0 = about 8 evaluations per run
    eval_tokens: int = 65536  # validation tokens per evaluation
    checkpoint_every_s: float = 300.0  # wall-clock seconds between checkpoints (and one at the end)
    checkpoint_every: int = 0  # steps between checkpoints; 0 = by time and by checkpoints_per_run
    # also at each 1/N of the run (by steps, tokens or time), so a short run can resume too
    checkpoints_per_run: int = 4
    keep_checkpoints: int = 2
    log_every: int = 10
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    device: str = "auto"
    compile: Literal["auto", "on", "off"] = (
        "auto"  # auto: when the budget is long enough to pay back ~30 s
    )
    # CPU threads per process; 0 = the cores other programs leave free / processes on this
    # machine, re-checked every threads_recheck_s of training (0 = never)
    threads: int = 0
    threads_recheck_s: float = 30.0
    # several processes (torchrun): "auto" = ddp; "fsdp2" shards weights, gradients, optimizer
    parallel: Literal["auto", "none", "ddp", "fsdp2"] = "auto"
    seed: int = 0
    # recompute each layer's forward in backward instead of keeping its activations: the
    # activations' memory (most of a LoRA step's peak) for ~1/3 more step time
    checkpoint_activations: bool = False

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.grad_accum < 1 or self.ctx < 2:
            raise ValueError("batch_size and grad_accum must be >= 1 and ctx >= 2")
        if self.keep_checkpoints < 1:
            raise ValueError("keep_checkpoints must be >= 1")
        if self.checkpoints_per_run < 0:
            raise ValueError("checkpoints_per_run must be >= 0")
