"""`pocketlm prune` from the command line, then the documented heal (`pocketlm distill` from the
original as teacher) and a GGUF export of the pruned model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pocketlm.common.manifest import read_manifest


def pocketlm(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "POCKETLM_NO_PROGRESS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "pocketlm", *args], capture_output=True, text=True, timeout=300,
        env=env,
    )  # fmt: skip


@pytest.mark.slow  # end to end through subprocesses; the unit tests cover the parts
def test_prune_then_heal_by_distillation_then_export(
    tiny_model_dir, synthetic_pipeline, tmp_path: Path
):
    tokens, pruned = str(synthetic_pipeline["tokens"]), tmp_path / "pruned"
    r = pocketlm(
        "prune", "--model", str(tiny_model_dir), "--ratio", "0.6", "--calib", tokens,
        "--out", str(pruned), "--calib-tokens", "1k", "--ctx", "16",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1] == str(pruned)
    summary = read_manifest(pruned)["summary"]["pruning"]
    assert summary["params_after"] <= summary["target_params"] < summary["params_before"]

    r = pocketlm("prune", "--model", str(tiny_model_dir), "--heads", "1", "--calib", tokens,
                 "--out", str(tmp_path / "bad"))  # fmt: skip
    assert r.returncode != 0 and "--heads must be a multiple of 2" in r.stderr

    healed = tmp_path / "healed"
    r = pocketlm(
        "distill", "--teacher", str(tiny_model_dir), "--student", str(pruned), "--tokens", tokens,
        "--out", str(healed), "--max-steps", "2", "--precision", "fp32", "--device", "cpu",
        "--batch-size", "4", "--ctx", "16",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert read_manifest(healed / "model")["summary"]["model"] == summary_model(pruned)

    gguf = tmp_path / "pruned.gguf"
    r = pocketlm("export", "gguf", "--model", str(pruned), "--out", str(gguf))
    assert r.returncode == 0, r.stderr[-3000:]
    assert gguf.stat().st_size > 0


def summary_model(model_dir: Path) -> dict:
    return read_manifest(model_dir)["summary"]["model"]
