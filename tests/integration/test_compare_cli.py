"""`pocketlm compare` through the real CLI: the tiny model against its int8 variant."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def pocketlm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pocketlm", *args], capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow  # end to end through subprocesses; the unit tests cover the parts
def test_compare_the_tiny_model_and_its_int8_variant(tiny_model_dir, synthetic_pipeline, tmp_path):
    from pocketlm.compress.quantize import quantize_model_dir

    q8, _ = quantize_model_dir(tiny_model_dir, tmp_path / "q8", "int8")
    task = tmp_path / "task.csv"
    task.write_text("text,label\nhello there,a\ngood bye,b\n", encoding="utf-8")
    out = tmp_path / "cmp"
    r = pocketlm(
        "compare", str(tiny_model_dir), str(q8), "--tokens", str(synthetic_pipeline["tokens"]),
        "--task", str(task), "--out", str(out), "--prompt-tokens", "8", "--new-tokens", "4",
        "--rounds", "1", "--max-tokens", "2048",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == str(out)
    assert "| variant |" in r.stdout and "| q8" in r.stdout
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert [v["quantization"] for v in report["variants"]] == ["float", "int8"]
    # a text/label file on language models: the likelier label word, as `pocketlm eval --task`
    assert all(v["bpb"] > 0 and 0 <= v["task_accuracy"] <= 1 for v in report["variants"])
    assert all(v["task_scores"]["task"]["metric"] == "acc" for v in report["variants"])
    assert "Parity with the reference (model):" in r.stdout and "| q8 |" in r.stdout
    assert report["parity"]["variants"][0]["tasks"]["task"]["same_answer"] is not None
    assert {"report.md", "report.json", "pareto.png", "manifest.json"} <= {
        p.name for p in out.iterdir()
    }
    again = pocketlm("compare", str(tiny_model_dir), "--out", str(out))
    assert again.returncode == 2 and "already exists" in again.stderr


@pytest.mark.slow  # end to end through subprocesses; the unit tests cover the parts
def test_compare_names_a_bad_directory(tiny_model_dir, tmp_path):
    r = pocketlm("compare", str(tiny_model_dir), str(tmp_path / "nothing-here"))
    assert r.returncode == 2
    assert "nothing-here" in r.stderr and "Traceback" not in r.stderr
