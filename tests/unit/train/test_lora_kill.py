"""No LoRA run is lost either: `finetune --lora-rank` (with adapter dropout, so the RNG state
matters) killed with SIGKILL at random moments and resumed each time ends with the losses and the
adapter of a run that was never interrupted. The fast in-process version of this is
test_lora_task.py; this one drives the real command."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from pocketlm.checkpoint.adapters import ADAPTER_FILE
from pocketlm.checkpoint.run_checkpoints import list_checkpoints
from pocketlm.train.metrics import read_metrics

STEPS = 30
ENV = {**os.environ, "POCKETLM_NO_PROGRESS": "1"}


def _args(base, tokens, out) -> list[str]:
    return [
        sys.executable, "-m", "pocketlm", "finetune", "--model", str(base), "--tokens", str(tokens),
        "--out", str(out), "--lora-rank", "4", "--lora-dropout", "0.1", "--ctx", "32",
        "--batch-size", "4", "--max-steps", str(STEPS), "--precision", "fp32", "--device", "cpu",
        "--set", "train.log_every=1", "--set", "train.eval_tokens=256",
        "--set", "train.threads=1", "--set", "train.compile=off",
    ]  # fmt: skip


def _finish(base, tokens, out) -> None:
    args = _args(base, tokens, out) + (["--resume"] if out.exists() else [])
    proc = subprocess.run(args, capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.slow
def test_a_lora_run_killed_anywhere_resumes_to_the_uninterrupted_run(
    tiny_model_dir, synthetic_pipeline, tmp_path
):
    tokens = synthetic_pipeline["tokens"]
    _finish(tiny_model_dir, tokens, tmp_path / "reference")
    run = tmp_path / "killed"
    rng = random.Random(2027)
    kills = []
    for _ in range(5):
        args = _args(tiny_model_dir, tokens, run) + (["--resume"] if run.exists() else [])
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
        time.sleep(rng.uniform(0.5, 4.5))
        if proc.poll() is not None:
            assert proc.returncode == 0
            break
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        kills.append(max((s for s, _ in list_checkpoints(run / "checkpoints")), default=0))
    _finish(tiny_model_dir, tokens, run)
    assert kills, "no kill happened before the run finished: nothing was tested"
    a, b = (
        {r["step"]: r["loss"] for r in read_metrics(d / "metrics.jsonl")}
        for d in (tmp_path / "reference", run)
    )
    assert sorted(a) == list(range(1, STEPS + 1)) and a == b
    wa, wb = (load_file(str(d / "model" / ADAPTER_FILE)) for d in (tmp_path / "reference", run))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
