from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pocketlm.model.config import ModelConfig
from pocketlm.train.budget import parse_budget
from pocketlm.train.plan import TOKENS_PER_PARAM, PlanRow, memory_estimate, recommend

_PROBE = """
import json, sys, torch, torch.nn.functional as F
from pocketlm.model.config import ModelConfig
from pocketlm.model.transformer import build_model
from pocketlm.train.optim import adamw_kernel
from pocketlm.train.plan import memory_estimate, runtime_baseline_bytes
d, L, h, V, B, T = map(int, sys.argv[1:7])
torch.set_num_threads(1)
base = runtime_baseline_bytes()
cfg = ModelConfig(vocab_size=V, dim=d, n_layers=L, n_heads=h, n_kv_heads=h, max_seq_len=T)
model = build_model(cfg)
opt = torch.optim.AdamW(model.parameters(), lr=1e-3, **adamw_kernel(torch.device('cpu')))
x = torch.randint(0, V, (B, T)); y = torch.randint(0, V, (B, T))
for _ in range(2):
    model(x, targets=y).backward(); opt.step(); opt.zero_grad(set_to_none=True)
# VmHWM, not ru_maxrss: after fork+exec ru_maxrss starts at the parent's (pytest's) RSS.
try:
    peak = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:"))
except OSError:  # not Linux
    import resource; peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"estimate": memory_estimate(cfg, batch_size=B, ctx=T)["total"] + base, "peak": peak}))
"""


@pytest.mark.parametrize(
    "shape",
    [
        "128 4 4 4096 16 256",
        # measured peaks of bigger shapes take 6-16 s each on 2 cores: the slow tier
        pytest.param("256 6 8 4096 8 256", marks=pytest.mark.slow),
        pytest.param("192 6 6 8192 4 512", marks=pytest.mark.slow),
        pytest.param("256 2 4 49152 8 512", marks=pytest.mark.slow),
    ],
)
def test_memory_estimate_is_within_25_percent_of_peak_rss(shape):
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, *shape.split()], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert 0.75 <= r["estimate"] / r["peak"] <= 1.25, r


def test_recommend_picks_the_largest_size_the_budget_can_feed():
    small = PlanRow(
        "s", ModelConfig(vocab_size=512, dim=64, n_layers=2, n_heads=2, n_kv_heads=2), 0.01, 1000
    )
    large = PlanRow(
        "l", ModelConfig(vocab_size=512, dim=256, n_layers=8, n_heads=4, n_kv_heads=4), 0.1, 1000
    )
    # l needs TOKENS_PER_PARAM tokens per non-embedding parameter, in steps of 1000 tokens
    steps_for_l = TOKENS_PER_PARAM * large.config.num_params(include_embeddings=False) / 1000
    assert recommend([small, large], parse_budget(f"{int(steps_for_l * 1.2)} steps")).name == "l"
    assert recommend([small, large], parse_budget(f"{int(steps_for_l * 0.8)} steps")).name == "s"
    assert (
        recommend([large], parse_budget("20 steps")).name == "l"
    )  # nothing fits: the smallest given
    # an explicit ratio overrides the default
    budget = parse_budget(f"{int(steps_for_l * 1.2)} steps")
    assert recommend([small, large], budget, tokens_per_param=10 * TOKENS_PER_PARAM).name == "s"


def test_memory_estimate_parts():
    cfg = ModelConfig(vocab_size=1000, dim=64, n_layers=2, n_heads=2, n_kv_heads=2)
    m = memory_estimate(cfg, batch_size=2, ctx=16)
    assert (
        m["weights"] == m["grads"] == 4 * cfg.num_params()
        and m["optimizer"] == 8 * cfg.num_params()
    )
    assert m["total"] == sum(v for k, v in m.items() if k != "total")


def test_plan_cli(synthetic_pipeline):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pocketlm",
            "plan",
            "--tokens",
            str(synthetic_pipeline["tokens"]),
            "--layers",
            "2",
            "--dim",
            "32",
            "--heads",
            "2",
            "--ctx",
            "32",
            "--batch-size",
            "4",
            "--budget",
            "1M",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "recommended: 2x32" in r.stdout and "epochs" in r.stdout and "tok/s" in r.stdout
    # the suggested command is whole and runs as it is: the CLI's own parser accepts it
    import shlex

    from pocketlm.cli.main import build_parser

    command = r.stdout.strip().splitlines()[-1].strip()
    assert "..." not in command and "…" not in command
    args = build_parser().parse_args(shlex.split(command)[1:])
    assert (args.layers, args.dim, args.heads, args.ctx, args.batch_size) == (2, 32, 2, 32, 4)
    assert args.tokens == str(synthetic_pipeline["tokens"]) and args.max_tokens == "1M"


def test_time_budgets_pay_for_evaluations_the_final_reserve_and_compilation():
    from pocketlm.train.cadence import EVALS_PER_RUN
    from pocketlm.train.plan import COMPILE_SECONDS, COMPILE_SPEEDUP

    cfg = ModelConfig(vocab_size=512, dim=64, n_layers=2, n_heads=2, n_kv_heads=2)
    # 0.1 s a step of 1000 tokens (10k tokens/s), 2 s an evaluation
    row = PlanRow("r", cfg, 0.1, 1000, seconds_per_eval=2.0)
    budget = parse_budget("2m")
    seconds = row.training_seconds(budget)
    # eight evaluations, the final save's reserve (3 s) and four quarter-mark checkpoints
    assert 120 - EVALS_PER_RUN * 2.0 - 3.0 - 1.0 < seconds < 120 - EVALS_PER_RUN * 2.0 - 3.0
    assert row.tokens_in(budget) == pytest.approx(seconds * 10_000)
    compiled = PlanRow("r", cfg, 0.1, 1000, seconds_per_eval=2.0, compiled=True)
    assert compiled.training_seconds(budget) == pytest.approx(seconds - COMPILE_SECONDS)
    assert compiled.tokens_in(budget) == pytest.approx(
        (seconds - COMPILE_SECONDS) * 10_000 * COMPILE_SPEEDUP
    )
    # a budget smaller than its overheads buys nothing, never a negative count
    assert row.tokens_in(parse_budget("10s")) == 0.0
    # step and token budgets are exact whatever the speed
    assert row.tokens_in(parse_budget("50 steps")) == 50_000
    assert row.tokens_in(parse_budget("2M tokens")) == 2_000_000


def test_the_plan_measures_the_loops_own_step(monkeypatch):
    """measure_step_seconds runs train/step.py's optimizer_step (Muon by default), not a
    stand-in optimizer: the plan's speed is the speed training will have."""
    import torch

    import pocketlm.train.step as step_module
    from pocketlm.train.plan import measure_step_seconds

    calls = []
    real = step_module.optimizer_step

    def counting(run):
        calls.append(sorted(type(o).__name__ for o in run.optimizers))
        return real(run)

    monkeypatch.setattr(step_module, "optimizer_step", counting)
    cfg = ModelConfig(vocab_size=128, dim=32, n_layers=1, n_heads=2, n_kv_heads=2, max_seq_len=16)
    seconds = measure_step_seconds(
        cfg, batch_size=2, ctx=16, device=torch.device("cpu"), precision="fp32", steps=2
    )
    assert seconds > 0 and len(calls) == 3  # one warm-up, two measured
    assert "Muon" in calls[0]
