"""The three data commands, end to end through the real CLI, on a user folder (the embedded
`stdlib` corpus goes end to end through the quickstart test)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def pocketlm(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pocketlm", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
    )


def test_user_folder_pipeline_and_inspect(text_folder, tmp_path):
    corpus, tok, tokens = tmp_path / "corpus", tmp_path / "tok", tmp_path / "tokens"
    r = pocketlm(
        "data",
        "build",
        str(text_folder),
        "--out",
        str(corpus),
        "--val-fraction",
        "0.2",
        "--set",
        "dedup.threshold=0.7",
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(corpus)
    m = json.loads((corpus / "manifest.json").read_text())
    assert m["config"]["dedup"]["threshold"] == 0.7 and m["config"]["val_fraction"] == 0.2
    assert m["command"][:3] == ["pocketlm", "data", "build"]
    r = pocketlm(
        "tokenizer", "train", "--data", str(corpus), "--vocab-size", "400", "--out", str(tok)
    )
    assert r.returncode == 0, r.stderr
    r = pocketlm(
        "data", "encode", "--data", str(corpus), "--tokenizer", str(tok), "--out", str(tokens)
    )
    assert r.returncode == 0, r.stderr
    r = pocketlm("inspect", str(tokens), "--verify")
    assert r.returncode == 0, r.stderr
    for needle in (
        "tokens (schema 1",
        "parents:",
        "corpus",
        "tokenizer",
        "summary:",
        "bytes_per_token",
        "verify: every file matches",
    ):
        assert needle in r.stdout


def test_cli_errors_are_one_clear_line_with_exit_2(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"body": "x"}\n')
    r = pocketlm("data", "build", str(tmp_path / "d.jsonl"), "--out", str(tmp_path / "o"))
    assert r.returncode == 2
    assert (
        r.stderr.startswith("error: ")
        and "d.jsonl, line 1, byte offset 0: missing field 'text'" in r.stderr
    )
    assert "Traceback" not in r.stderr
    r = pocketlm(
        "data", "build", "stdlib", "--out", str(tmp_path / "o"), "--set", "clean.min_char=5"
    )
    assert r.returncode == 2 and "did you mean 'clean.min_chars'" in r.stderr
    r = pocketlm("tokenizer", "train", "--data", str(tmp_path), "--out", str(tmp_path / "t"))
    assert r.returncode == 2 and "not a PocketLM artifact" in r.stderr


def test_malformed_csv_stops_with_its_line_or_is_counted_and_named(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    rows = [
        f"{i},Row number {i} has a long enough text to be kept by the filters." for i in range(4)
    ]
    rows[1] = '1,"this quote is never closed and would swallow the rows after it'
    (src / "table.csv").write_text("id,text\n" + "\n".join(rows) + "\n")
    r = pocketlm("data", "build", str(src), "--out", str(tmp_path / "o1"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    offset = len("id,text\n") + len(rows[0]) + 1
    assert f"table.csv, line 3, byte offset {offset}: malformed CSV" in r.stderr
    r = pocketlm(
        "data", "build", str(src), "--out", str(tmp_path / "o2"), "--on-bad-record", "skip"
    )
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "o2" / "manifest.json").read_text())["summary"]
    assert summary["accounting"]["records"] == {
        "in": 4,
        "kept": 3,
        "dropped": {"bad:invalid_csv": 1},
    }
    named = (tmp_path / "o2" / "dropped_files.jsonl").read_text()
    assert '"status": "partial"' in named and "table.csv" in named
    assert "table.csv" in (tmp_path / "o2" / "data_report.md").read_text()
