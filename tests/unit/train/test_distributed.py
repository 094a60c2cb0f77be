"""torchrun on the CPU (gloo): two processes train like one with the same global batch, with DDP
and FSDP2, and an FSDP2 run resumes at another world size (2 -> 1 -> 2) with the same losses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from pocketlm.train.metrics import read_metrics

dist = pytest.importorskip("torch.distributed")
pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="torch without gloo"
)

STEPS = 20


def _pretrain(
    tokens,
    out,
    *,
    procs: int,
    batch: int,
    accum: int = 1,
    steps: int = STEPS,
    parallel: str = "auto",
    resume: bool = False,
) -> dict[int, float]:
    launcher = (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}"]
        if procs > 1
        else [sys.executable]
    )
    args = [
        *launcher,
        "-m",
        "pocketlm",
        "pretrain",
        "--tokens",
        str(tokens),
        "--out",
        str(out),
        "--layers",
        "2",
        "--dim",
        "32",
        "--heads",
        "2",
        "--kv-heads",
        "1",
        "--ctx",
        "32",
        "--batch-size",
        str(batch),
        "--grad-accum",
        str(accum),
        "--max-steps",
        str(steps),
        "--precision",
        "fp32",
        "--device",
        "cpu",
        "--set",
        f"train.parallel={parallel}",
        "--set",
        "train.log_every=1",
        "--set",
        "train.eval_tokens=256",
        "--set",
        "train.compile=off",
        "--set",
        "train.checkpoint_every=5",
        # the same updates whatever the summation order: fp32 Newton-Schulz, a constant lr
        # after warm-up (so a resumed run may extend the budget)
        "--set",
        "train.optim.muon_precision=fp32",
        "--set",
        "train.schedule.kind=constant",
        "--set",
        "train.schedule.warmup_steps=2",
    ] + (["--resume"] if resume else [])
    env = {**os.environ, "POCKETLM_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    # A session of its own: on a timeout the launcher AND its workers die (subprocess.run's kill
    # would leave the workers holding the pipes, and the test would wait for them forever).
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        start_new_session=True,
    )  # fmt: skip
    try:
        stdout, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"{parallel} run timed out after 300 s: {stderr[-3000:]}")
    assert proc.returncode == 0, stderr[-3000:]
    assert stdout.count(str(out / "model")) == 1  # only the main rank reports
    return {r["step"]: r["loss"] for r in read_metrics(out / "metrics.jsonl")}


def _max_gap(a: dict[int, float], b: dict[int, float]) -> float:
    assert sorted(a) == sorted(b) == list(range(1, STEPS + 1))
    return max(abs(a[s] - b[s]) for s in a)


@pytest.fixture(scope="module")
def tokens(synthetic_pipeline):
    return synthetic_pipeline["tokens"]


def test_ddp_on_two_processes_equals_one_process_with_the_same_global_batch(tokens, tmp_path):
    one = _pretrain(tokens, tmp_path / "one", procs=1, batch=8)
    two = _pretrain(tokens, tmp_path / "two", procs=2, batch=4, parallel="ddp")
    assert _max_gap(one, two) <= 1e-5
    assert one[STEPS] < one[1] - 0.5  # it trained


def test_fsdp2_equals_one_process_and_resumes_at_another_world_size(tokens, tmp_path):
    one = _pretrain(tokens, tmp_path / "one", procs=1, batch=4, accum=2)  # 8 sequences a step
    two = _pretrain(tokens, tmp_path / "two", procs=2, batch=4, parallel="fsdp2")
    assert _max_gap(one, two) <= 1e-5

    run = tmp_path / "resumed"
    _pretrain(tokens, run, procs=2, batch=4, steps=10, parallel="fsdp2")
    _pretrain(tokens, run, procs=1, batch=8, steps=15, parallel="fsdp2", resume=True)
    resumed = _pretrain(tokens, run, procs=2, batch=4, parallel="fsdp2", resume=True)
    # each resumed step's loss is the uninterrupted run's, to the metrics' rounding (1e-8)
    assert _max_gap(two, resumed) <= 1e-6
