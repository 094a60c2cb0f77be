"""No run is lost: `pretrain` killed with SIGKILL at random moments (start-up, steps, saves,
evaluation, the final model) and resumed each time ends with the losses and weights of a run that
was never interrupted; so do the states a kill leaves at the two delicate moments, made exactly."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from pocketlm.checkpoint.run_checkpoints import list_checkpoints
from pocketlm.train.metrics import read_metrics

STEPS = 40


def _args(tokens, out) -> list[str]:
    return [
        sys.executable, "-m", "pocketlm", "pretrain", "--tokens", str(tokens), "--out", str(out),
        "--layers", "2", "--dim", "32", "--heads", "2", "--kv-heads", "1", "--ctx", "32",
        "--batch-size", "4", "--max-steps", str(STEPS), "--precision", "fp32", "--device", "cpu",
        "--set", "train.log_every=1", "--set", "train.eval_tokens=256",
        "--set", "train.threads=1", "--set", "train.compile=off",
        # no step-based checkpoints: the default cadence (by time, and at each quarter) decides
    ]  # fmt: skip


ENV = {**os.environ, "POCKETLM_NO_PROGRESS": "1"}


def _finish(tokens, out) -> None:
    """Run (resuming when the run directory exists) to the end."""
    args = _args(tokens, out) + (["--resume"] if out.exists() else [])
    proc = subprocess.run(args, capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def _same_run(a, b) -> None:
    losses = [{r["step"]: r["loss"] for r in read_metrics(d / "metrics.jsonl")} for d in (a, b)]
    assert sorted(losses[0]) == list(range(1, STEPS + 1))
    assert losses[0] == losses[1]  # exact, every step
    wa, wb = (load_file(str(d / "model" / "model.safetensors")) for d in (a, b))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def reference(synthetic_pipeline, tmp_path_factory):
    out = tmp_path_factory.mktemp("kill") / "reference"
    _finish(synthetic_pipeline["tokens"], out)
    return out


def test_sigkill_at_random_moments_then_resume_equals_an_uninterrupted_run(
    synthetic_pipeline, reference, tmp_path
):
    tokens, run = synthetic_pipeline["tokens"], tmp_path / "killed"
    rng = random.Random(2026)
    kills = []
    for _ in range(6):
        args = _args(tokens, run) + (["--resume"] if run.exists() else [])
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
        time.sleep(rng.uniform(0.5, 4.5))  # start-up takes ~2-3 s, the 40 steps ~1-2 s
        if proc.poll() is not None:
            assert proc.returncode == 0
            break
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        done = [s for s, _ in list_checkpoints(run / "checkpoints")]
        kills.append(max(done, default=0))
    _finish(tokens, run)
    assert kills, "no kill happened before the run finished: nothing was tested"
    _same_run(reference, run)


def test_the_states_a_kill_leaves_at_the_delicate_moments_resume(
    synthetic_pipeline, reference, tmp_path
):
    """(1) After the last checkpoint, before the final model: resume writes the model. (2) In
    the middle of a save: a half-written checkpoint (a temp dir) is ignored and cleaned up.
    (3) Before the first checkpoint: the run directory exists, resume starts the run over."""
    tokens, run = synthetic_pipeline["tokens"], tmp_path / "run"
    shutil.copytree(reference, run)
    shutil.rmtree(run / "model")
    _finish(tokens, run)
    _same_run(reference, run)

    ckpts = run / "checkpoints"
    last = max(list_checkpoints(ckpts))[1]
    half = ckpts / ".step-0000030.tmp-99999"
    shutil.copytree(last, half)
    (half / "model.safetensors").write_bytes(b"half written")
    shutil.rmtree(run / "model")
    for step, path in list_checkpoints(ckpts):  # back to the quarter mark at step 20
        if step > 20:
            shutil.rmtree(path)
    _finish(tokens, run)
    _same_run(reference, run)
    assert not half.exists()

    shutil.rmtree(run / "model")
    shutil.rmtree(ckpts)
    (run / "metrics.jsonl").unlink()
    _finish(tokens, run)
    _same_run(reference, run)
