"""`pocketlm distill` and `pocketlm distill cache` from the command line: cache a teacher,
train a preset student from the cache, distill live with on-policy batches."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pocketlm.common.manifest import read_manifest

FAST = ("--precision", "fp32", "--device", "cpu", "--batch-size", "4", "--ctx", "16")


def pocketlm(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "POCKETLM_NO_PROGRESS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "pocketlm", *args], capture_output=True, text=True, timeout=300,
        env=env,
    )  # fmt: skip


@pytest.mark.slow  # end to end through subprocesses; the unit tests cover the parts
def test_cache_then_distill_from_it_then_live(tiny_model_dir, synthetic_pipeline, tmp_path: Path):
    tokens, cache = str(synthetic_pipeline["tokens"]), tmp_path / "cache"
    r = pocketlm(
        "distill", "cache", "--teacher", str(tiny_model_dir), "--tokens", tokens,
        "--out", str(cache), "--ctx", "16", "--top-k", "32", "--max-tokens", "2k",
        "--shard-windows", "32", "--device", "cpu", "--precision", "fp32",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1] == str(cache)
    summary = read_manifest(cache)["summary"]
    assert summary["tokens"] == 2000 // 16 * 16 and summary["bytes_per_token"] <= 130

    run = tmp_path / "from-cache"  # --ctx comes from the cache
    r = pocketlm(
        "distill", "--cache", str(cache), "--student", "pico-1m", "--out", str(run),
        "--max-steps", "2", "--precision", "fp32", "--device", "cpu", "--batch-size", "4",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert "student: val loss" in r.stdout
    assert r.stdout.strip().splitlines()[-1] == str(run / "model")

    live = tmp_path / "live"
    r = pocketlm(
        "distill", "--teacher", str(tiny_model_dir), "--student", "pico-1m", "--tokens", tokens,
        "--out", str(live), "--max-steps", "2", "--loss", "jsd", "--beta", "0.3",
        "--on-policy", "0.5", "--hard-weight", "0.1", *FAST,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert "teacher: val loss" in r.stdout
    distilled = read_manifest(live / "model")["summary"]["distill"]
    assert distilled == {"loss": "jsd", "temperature": 1.0, "hard_weight": 0.1,
                         "on_policy": 0.5, "data": "tokens"}  # fmt: skip
