"""`pocketlm inspect` on what a new user points it at: a finished, an interrupted and a
just-started training run, and a quantized model (its parameter count is the model's)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

from pocketlm.common.manifest import read_manifest


def pocketlm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pocketlm", *args], capture_output=True, text=True, timeout=300
    )


def test_inspect_says_what_state_a_training_run_is_in(tiny_model_dir, tmp_path):
    run = shutil.copytree(tiny_model_dir.parent, tmp_path / "run")
    r = pocketlm("inspect", str(run))
    assert r.returncode == 0, r.stderr
    first = r.stdout.splitlines()[0]
    assert "training run (pretrain), finished: its final model is" in first
    assert "model (schema 1" in r.stdout  # then the final model's manifest
    shutil.rmtree(run / "model")
    r = pocketlm("inspect", str(run))
    assert "interrupted after step 6: the same command with --resume continues it" in r.stdout
    shutil.rmtree(run / "checkpoints")
    r = pocketlm("inspect", str(run), "--json")
    assert json.loads(r.stdout)["state"] == "started"


def test_a_quantized_model_reports_the_parameters_of_its_shape(tiny_model_dir, tmp_path):
    r = pocketlm(
        "quantize",
        "--model",
        str(tiny_model_dir),
        "--scheme",
        "int8",
        "--out",
        str(tmp_path / "q8"),
    )
    assert r.returncode == 0, r.stderr
    params = read_manifest(tmp_path / "q8")["summary"]["params"]
    assert params == read_manifest(tiny_model_dir)["summary"]["params"] > 10_000
    r = pocketlm("inspect", str(tmp_path / "q8"))
    shown = [line.split() for line in r.stdout.splitlines() if line.split()[:1] == ["params"]]
    assert shown == [["params", str(params)]]


def test_help_mentions_no_folder_the_repository_lacks():
    from pathlib import Path

    r = pocketlm("--help")
    root = Path(__file__).resolve().parents[2]
    for word in r.stdout.split():
        if word.endswith("/") and word[:-1].isidentifier():
            assert (root / word).is_dir(), f"--help points to {word}, which does not exist"
