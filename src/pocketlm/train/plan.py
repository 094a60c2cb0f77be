"""Plan a run: memory estimate, measured step time on this machine, tokens a budget buys, and the
recommended model size. The quickstart uses the recommendation; `pocketlm plan` prints it all."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from pocketlm.common.allocator import reuse_freed_memory
from pocketlm.model.config import ModelConfig
from pocketlm.model.linear_cross_entropy import chunk_rows
from pocketlm.model.presets import preset_config
from pocketlm.model.transformer import build_model
from pocketlm.train.budget import Budget
from pocketlm.train.optim import adamw_kernel
from pocketlm.train.task import autocast_context

DEFAULT_CANDIDATES = ("pico-1m", "nano-3m", "micro-6m", "mini-15m", "small-30m")
# Pick the largest size that still sees this many training tokens per non-embedding parameter
# within the budget. Measured on TinyStories with a 10-minute CPU budget (benchmarks/RESULTS.md):
# 9.3 tokens per parameter gave 0.953 bits/byte, 5.0 -> 0.945, 3.4 -> 0.941, 1.8 -> 0.937 (the
# best), 1.0 -> 0.950 — short budgets favour larger models than the ~20 of compute-optimal
# scaling laws, up to about 2 tokens per parameter.
TOKENS_PER_PARAM = 2.0


@dataclass(frozen=True)
class PlanRow:
    """One candidate size: its shape, measured speed and what the budget buys."""

    name: str
    config: ModelConfig
    seconds_per_step: float
    tokens_per_step: int

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_per_step / self.seconds_per_step

    def tokens_in(self, budget: Budget) -> float:
        """Training tokens reachable in the budget (time budgets lose ~10% to evaluation)."""
        if budget.kind == "tokens":
            return budget.amount
        if budget.kind == "steps":
            return budget.amount * self.tokens_per_step
        return 0.9 * budget.amount * self.tokens_per_s


def measure_step_seconds(
    config: ModelConfig,
    *,
    batch_size: int,
    ctx: int,
    device: torch.device,
    precision: str,
    steps: int = 2,
) -> float:
    """Seconds per optimizer step of a fresh model (best of `steps`, after one warm-up step)."""
    if device.type == "cpu":
        reuse_freed_memory()  # as the training loop does
    model = build_model(config, device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, **adamw_kernel(device))
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, config.vocab_size, (batch_size, ctx), generator=gen).to(device)
    y = torch.randint(0, config.vocab_size, (batch_size, ctx), generator=gen).to(device)
    autocast = autocast_context(device, precision)
    best = float("inf")
    for i in range(steps + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        with autocast:
            loss = model(x, targets=y)  # the training step's loss: LM head fused with it
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i > 0:
            best = min(best, time.perf_counter() - t0)
    return best


def plan_sizes(
    vocab_size: int,
    ctx: int,
    batch_size: int,
    device: torch.device,
    precision: str,
    candidates: tuple[str, ...] = DEFAULT_CANDIDATES,
    budget: Budget | None = None,
) -> list[PlanRow]:
    """Measure candidate presets, smallest first; stop at the first one the budget cannot feed."""
    rows = []
    for name in candidates:
        config = preset_config(name, vocab_size=vocab_size, max_seq_len=ctx)
        seconds = measure_step_seconds(
            config, batch_size=batch_size, ctx=ctx, device=device, precision=precision
        )
        row = PlanRow(name, config, seconds, batch_size * ctx)
        rows.append(row)
        starved = budget is not None and row.tokens_in(
            budget
        ) < TOKENS_PER_PARAM * config.num_params(include_embeddings=False)
        if starved or seconds > 5.0:
            break  # larger models are slower still: they cannot fit either
    return rows


def recommend(
    rows: list[PlanRow], budget: Budget, tokens_per_param: float = TOKENS_PER_PARAM
) -> PlanRow:
    """The largest size that sees at least `tokens_per_param` tokens per non-embedding parameter."""
    fitting = [
        r
        for r in rows
        if r.tokens_in(budget) >= tokens_per_param * r.config.num_params(include_embeddings=False)
    ]
    return (
        max(fitting, key=lambda r: r.config.num_params())
        if fitting
        else min(rows, key=lambda r: r.config.num_params())
    )


def memory_estimate(
    config: ModelConfig, *, batch_size: int, ctx: int, optimizer: str = "adamw"
) -> dict[str, int]:
    """Training memory in bytes (fp32 weights and AdamW, eager PyTorch on CPU), by component.

    weights + grads 4 bytes each per parameter, AdamW 8 (Muon ~4 on matrices); activations kept
    for backward ~ (14 x dim + 4 x ffn) floats per token per layer (calibrated against peak RSS).
    The loss is the LM head fused with cross-entropy: one chunk of logits at a time plus the
    stored gradients of the hidden states and the head, never (tokens x vocab) logits.
    """
    n = config.num_params()
    tokens = batch_size * ctx
    weights = grads = 4 * n
    optim = 8 * n if optimizer == "adamw" else 4 * n + 4 * config.vocab_size * config.dim
    loss_chunk = 3 * chunk_rows(config.vocab_size) * config.vocab_size  # logits, probs, copy
    loss_grads = 2 * tokens * config.dim + 2 * config.vocab_size * config.dim
    activations = 4 * (
        tokens * config.n_layers * (14 * config.dim + 4 * config.resolved_ffn_dim)
        + loss_chunk
        + loss_grads
    )
    return {
        "weights": weights,
        "grads": grads,
        "optimizer": optim,
        "activations": activations,
        "total": weights + grads + optim + activations,
    }


def runtime_baseline_bytes() -> int:
    """Resident memory of this process now (Python, torch and the rest), added to estimates."""
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:
        with open("/proc/self/statm", encoding="ascii") as fh:
            import os

            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
