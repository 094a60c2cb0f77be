"""`pocketlm classify` from the command line: train on a labelled file (held-out split, eval
report with metrics, PNG and failures), evaluate, predict from stdin and files, bad data."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest


def pocketlm(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "POCKETLM_NO_PROGRESS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "pocketlm", *args],
        capture_output=True, text=True, timeout=300, env=env, input=stdin,
    )  # fmt: skip


def _labelled(path: Path, n: int, seed: int) -> Path:
    """A separable task: texts with 'good' words are positive, with 'bad' words negative."""
    rng = random.Random(seed)
    good, bad = ["good", "great", "nice"], ["bad", "awful", "dull"]
    lines = ["text\tlabel"]
    for _ in range(n):
        positive = rng.random() < 0.5
        words = rng.choices(good if positive else bad, k=3) + rng.choices(["the", "a", "it"], k=2)
        rng.shuffle(words)
        lines.append(f"{' '.join(words)}\t{'positive' if positive else 'negative'}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_train_eval_predict(tiny_model_dir, tmp_path: Path) -> None:
    train = _labelled(tmp_path / "train.tsv", 160, 0)
    test = _labelled(tmp_path / "test.tsv", 40, 1)
    run = tmp_path / "run"
    r = pocketlm(
        "classify", "train", "--model", str(tiny_model_dir), "--data", str(train),
        "--out", str(run), "--max-steps", "40", "--batch-size", "16", "--lr", "3e-3",
        "--precision", "fp32", "--device", "cpu", "--set", "classify.train.threads=1",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1] == str(run / "model")
    assert "accuracy" in r.stdout
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert 15 <= metrics["n"] <= 17  # the stratified 10% of 160 (rounded per class)
    assert metrics["labels"] == ["negative", "positive"]
    assert (run / "eval" / "confusion.png").stat().st_size > 1000
    assert json.loads((run / "model" / "model_config.json").read_text())["labels"] == [
        "negative", "positive",
    ]  # fmt: skip

    report = tmp_path / "eval"
    r = pocketlm("classify", "eval", "--model", str(run), "--data", str(test), "--out", str(report))
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["n"] == 40 and metrics["accuracy"] >= 0.9, metrics
    failures = (report / "failures.jsonl").read_text().splitlines()
    assert len(failures) == round((1 - metrics["accuracy"]) * 40)

    r = pocketlm("classify", "predict", "--model", str(run), stdin="great good nice\nawful bad\n")
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [row["label"] for row in rows] == ["positive", "negative"]
    assert abs(sum(rows[0]["probabilities"].values()) - 1) < 1e-5

    texts = tmp_path / "texts.jsonl"
    texts.write_text('{"review": "dull awful it"}\n{"review": "nice great"}\n')
    r = pocketlm("classify", "predict", "--model", str(run), str(texts), "--text-column", "review")
    assert r.returncode == 0, r.stderr[-3000:]
    assert [json.loads(x)["label"] for x in r.stdout.splitlines()] == ["negative", "positive"]


@pytest.mark.slow  # end to end through subprocesses; the unit tests cover the parts
def test_bad_data_is_named(tiny_classifier_dir, tiny_model_dir, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\nfine words,positive\n,negative\n")
    r = pocketlm("classify", "eval", "--model", str(tiny_classifier_dir), "--data", str(bad),
                 "--out", str(tmp_path / "e"))  # fmt: skip
    assert r.returncode == 2 and "bad.csv" in r.stderr and "line 3" in r.stderr, r.stderr
    other = tmp_path / "other.csv"
    other.write_text("text,label\nsome words,spam\n")
    r = pocketlm("classify", "eval", "--model", str(tiny_classifier_dir), "--data", str(other),
                 "--out", str(tmp_path / "e2"))  # fmt: skip
    assert r.returncode == 2 and "spam" in r.stderr, r.stderr
    r = pocketlm("classify", "predict", "--model", str(tiny_model_dir), stdin="words\n")
    assert r.returncode == 2 and "classifier" in r.stderr, r.stderr


@pytest.mark.slow  # end to end through subprocesses; the unit tests cover the parts
def test_distill_makes_a_student_of_half_the_layers(tiny_model_dir, tmp_path: Path) -> None:
    train = _labelled(tmp_path / "train.tsv", 120, 2)
    teacher = tmp_path / "teacher"
    common = ["--batch-size", "16", "--lr", "3e-3", "--precision", "fp32", "--device", "cpu"]
    r = pocketlm("classify", "train", "--model", str(tiny_model_dir), "--data", str(train),
                 "--out", str(teacher), "--max-steps", "30", *common)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    student = tmp_path / "student"
    r = pocketlm("classify", "distill", "--teacher", str(teacher), "--data", str(train),
                 "--out", str(student), "--max-steps", "30", *common)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    t_config = json.loads((teacher / "model" / "model_config.json").read_text())
    s_config = json.loads((student / "model" / "model_config.json").read_text())
    assert s_config["n_layers"] == (t_config["n_layers"] + 1) // 2
    assert s_config["labels"] == t_config["labels"]
    assert json.loads((student / "eval" / "metrics.json").read_text())["accuracy"] >= 0.8
