"""Plan a run: memory estimate, measured step time on this machine, tokens a budget buys, and the
recommended model size. The quickstart uses the recommendation; `pocketlm plan` prints it all."""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from pocketlm.model.config import ModelConfig
from pocketlm.model.linear_cross_entropy import chunk_rows
from pocketlm.model.presets import preset_config
from pocketlm.model.transformer import build_model
from pocketlm.train.budget import Budget
from pocketlm.train.cadence import EVALS_PER_RUN
from pocketlm.train.compile import should_compile
from pocketlm.train.config import TrainConfig as _TrainConfig
from pocketlm.train.task import autocast_context

EVAL_TOKENS = _TrainConfig.eval_tokens  # the loop's default validation tokens per evaluation

DEFAULT_CANDIDATES = ("pico-1m", "nano-3m", "micro-6m", "mini-15m", "small-30m")
# Pick the largest size that still sees this many training tokens per non-embedding parameter
# within the budget. Measured on TinyStories with a 10-minute CPU budget (benchmarks/RESULTS.md):
# 9.3 tokens per parameter gave 0.953 bits/byte, 5.0 -> 0.945, 3.4 -> 0.941, 1.8 -> 0.937 (the
# best), 1.0 -> 0.950 — short budgets favour larger models than the ~20 of compute-optimal
# scaling laws, up to about 2 tokens per parameter.
TOKENS_PER_PARAM = 2.0


# A run that compiles (train.compile auto: time budgets of 4 minutes or more) spends about this
# long compiling and then steps this much faster than the eager step the plan measures
# (benchmarks/RESULTS.md, training speed: Muon compiled ÷ eager 1.09-1.22×).
COMPILE_SECONDS = 30.0
COMPILE_SPEEDUP = 1.15


@dataclass(frozen=True)
class PlanRow:
    """One candidate size: its shape, measured speed and what the budget buys.

    seconds_per_step is the training loop's own optimizer step (eager); seconds_per_eval one
    evaluation of `eval_tokens` validation tokens, as the loop runs EVALS_PER_RUN of them.
    """

    name: str
    config: ModelConfig
    seconds_per_step: float
    tokens_per_step: int
    seconds_per_eval: float = 0.0
    compiled: bool = False  # the run will compile its step (train.compile auto for this budget)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_per_step / self.seconds_per_step

    def training_seconds(self, budget: Budget) -> float:
        """Seconds of a time budget left for optimizer steps: evaluations, the final save's
        reserve and compilation come off the top (as the loop's clock counts them)."""
        reserve = min(3.0, 0.05 * budget.amount) + CHECKPOINT_SECONDS * CHECKPOINTS
        spent = EVALS_PER_RUN * self.seconds_per_eval + reserve
        return max(0.0, budget.amount - spent - (COMPILE_SECONDS if self.compiled else 0.0))

    def tokens_in(self, budget: Budget) -> float:
        """Training tokens reachable in the budget."""
        if budget.kind == "tokens":
            return budget.amount
        if budget.kind == "steps":
            return budget.amount * self.tokens_per_step
        speed = self.tokens_per_s * (COMPILE_SPEEDUP if self.compiled else 1.0)
        return self.training_seconds(budget) * speed


CHECKPOINTS = 4  # train.checkpoints_per_run (time-based ones are rarer in short runs)
CHECKPOINT_SECONDS = 0.2  # a small model's save


def fixed_batch_task(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    roles: dict | None = None,
    name: str = "plan",
):
    """A TrainTask factory over one fixed batch: the loop's step without the data loader (the
    plan and the training benchmarks measure it); roles default to pretraining's."""
    from pocketlm.train.roles import roles_by_structure
    from pocketlm.train.task import TrainTask

    class Same:
        def __next__(self):
            return x, y

        def state_dict(self) -> dict:
            return {}

        def load_state_dict(self, state: dict) -> None:
            pass

    def factory(ctx):
        return TrainTask(
            name=name,
            model=model,
            batches=Same(),
            loss=lambda m, b: (m(b[0], targets=b[1], reduction="sum"), b[1].numel()),
            to_device=lambda b, device: (b[0].to(device), b[1].to(device)),
            tokens_per_batch=x.numel(),
            roles=roles or roles_by_structure(model, heads=[model.lm_head]),
            save=lambda request: request.out,
            load=lambda checkpoint: {},
        )

    return factory


def measure_step_seconds(
    config: ModelConfig,
    *,
    batch_size: int,
    ctx: int,
    device: torch.device,
    precision: str,
    steps: int = 2,
    optim: str = "muon",
) -> float:
    """Seconds per optimizer step of the training loop itself (train/step.py: the default
    optimizer, autocast, clipping), eager, best of `steps` after one warm-up step."""
    from pocketlm.train.config import OptimConfig, TrainConfig
    from pocketlm.train.run import setup_run
    from pocketlm.train.step import optimizer_step

    model = build_model(config)
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, config.vocab_size, (batch_size, ctx), generator=gen)
    y = torch.randint(0, config.vocab_size, (batch_size, ctx), generator=gen)
    train_config = TrainConfig(
        optim=OptimConfig(kind=optim),
        batch_size=batch_size,
        ctx=ctx,
        budget="1000000 steps",
        precision=precision,
        device=str(device),
        compile="off",
    )
    with tempfile.TemporaryDirectory(prefix="plan-") as tmp:
        run = setup_run(
            fixed_batch_task(model, x, y),
            train_config,
            Path(tmp),
            resume=False,
            command=None,
            now=time.perf_counter,
        )
        best = float("inf")
        for i in range(steps + 1):
            _sync(device)
            t0 = time.perf_counter()
            optimizer_step(run)
            _sync(device)
            if i > 0:
                best = min(best, time.perf_counter() - t0)
    return best


def measure_eval_seconds(
    config: ModelConfig, *, ctx: int, eval_tokens: int, device: torch.device, precision: str
) -> float:
    """Seconds one evaluation of `eval_tokens` tokens takes (forward only, batches of 8 rows)."""
    model = build_model(config, device=device).eval()
    gen = torch.Generator().manual_seed(1)
    rows = 8
    x = torch.randint(0, config.vocab_size, (rows, ctx), generator=gen).to(device)
    autocast = autocast_context(device, precision)
    with torch.no_grad(), autocast:
        model(x, targets=x)  # warm-up
        _sync(device)
        t0 = time.perf_counter()
        model(x, targets=x)
        _sync(device)
    return (time.perf_counter() - t0) * eval_tokens / (rows * ctx)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_row(
    name: str,
    config: ModelConfig,
    batch_size: int,
    ctx: int,
    device: torch.device,
    precision: str,
    budget: Budget | None,
    eval_tokens: int = EVAL_TOKENS,
) -> PlanRow:
    """Measure one shape's training step and evaluation on this machine."""
    seconds = measure_step_seconds(
        config, batch_size=batch_size, ctx=ctx, device=device, precision=precision
    )
    eval_s = measure_eval_seconds(
        config, ctx=ctx, eval_tokens=eval_tokens, device=device, precision=precision
    )
    compiled = budget is not None and should_compile(_TrainConfig.compile, budget, device)
    return PlanRow(name, config, seconds, batch_size * ctx, eval_s, compiled)


def plan_sizes(
    vocab_size: int,
    ctx: int,
    batch_size: int,
    device: torch.device,
    precision: str,
    candidates: tuple[str, ...] = DEFAULT_CANDIDATES,
    budget: Budget | None = None,
    eval_tokens: int = EVAL_TOKENS,
) -> list[PlanRow]:
    """Measure candidate presets, smallest first; stop at the first one the budget cannot feed."""
    rows = []
    for name in candidates:
        config = preset_config(name, vocab_size=vocab_size, max_seq_len=ctx)
        row = measure_row(name, config, batch_size, ctx, device, precision, budget, eval_tokens)
        rows.append(row)
        starved = budget is not None and row.tokens_in(
            budget
        ) < TOKENS_PER_PARAM * config.num_params(include_embeddings=False)
        if starved or row.seconds_per_step > 5.0:
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
