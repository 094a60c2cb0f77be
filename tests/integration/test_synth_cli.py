"""`pocketlm synth` against PocketLM's own server on 127.0.0.1 (a tiny model behind an API key):
records with the server's top_logprobs, the key read from a file and printed or stored nowhere,
a re-run that sends nothing, and `pocketlm finetune --data OUT` training on the output."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from tests.integration.live_server import live_server, make_scheduler

KEY = "sk-synth-test-0451"
PROMPTS = ["the little cat", "a dog and a fox", "why is the sea blue", "the sun", "an owl"]


def pocketlm(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "POCKETLM_NO_PROGRESS": "1", **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "pocketlm", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    scheduler, tokenizer = make_scheduler(tiny_model_dir, slots=2)
    with live_server(scheduler, tokenizer, api_key=KEY) as srv:
        yield srv


def test_synth_from_pocketlm_serve_feeds_finetune(server, tiny_model_dir, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join([*PROMPTS, PROMPTS[0].upper()]) + "\n")  # one duplicate
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    out = tmp_path / "synth"
    args = [
        "synth", "--teacher-url", server.url, "--api-key-file", str(key_file),
        "--prompts", str(prompts), "--out", str(out), "--top-logprobs", "3",
        "--max-tokens", "6", "--temperature", "1.0", "--seed", "7", "--keep-truncated",
        "--concurrency", "2", "--price-per-1k-tokens", "0.5", "1.5",
    ]  # fmt: skip
    r = pocketlm(*args)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1] == str(out)
    assert "synth: " in r.stderr and "records" in r.stderr and "cost" in r.stderr

    manifest = json.loads((out / "manifest.json").read_text())
    summary = manifest["summary"]
    assert summary["prompts"] == {"unique": 5, "duplicates_dropped": 1}
    answers = summary["this_run"]["answers"]
    assert sum(answers.values()) == 5 and answers.get("failed", 0) == 0, answers
    records = [json.loads(x) for x in (out / "data.jsonl").read_text().splitlines()]
    assert len(records) == summary["records"] == answers["kept"] >= 3
    usage = summary["this_run"]
    assert usage["prompt_tokens"] > 0 and 0 < usage["completion_tokens"] <= 5 * 6
    assert usage["cost"] > 0
    for rec in records:
        assert rec["messages"][-1]["role"] == "assistant" and rec["teacher"]["model"] == "tiny"
        targets = rec["teacher"]["logprobs"]
        assert targets and all(len(t["top"]) == 3 for t in targets)
        assert all(t["logprob"] is None or t["logprob"] <= 0 for t in targets)
    for path in out.rglob("*"):  # the key is in no file, and was never printed
        assert KEY not in path.read_text(encoding="utf-8"), path
    assert KEY not in r.stdout + r.stderr

    # a re-run of the same command (the key from the environment this time) sends nothing
    env_args = [a for a in args if a not in ("--api-key-file", str(key_file))]
    r = pocketlm(*env_args, "--api-key-env", "MY_TEACHER_KEY", env_extra={"MY_TEACHER_KEY": KEY})
    assert r.returncode == 0, r.stderr[-3000:]
    again = json.loads((out / "manifest.json").read_text())["summary"]
    assert again["this_run"]["http_requests"] == 0 and again["records"] == summary["records"]

    # without the key the server refuses: a clear error, exit 2, the output untouched
    r = pocketlm(*[a for a in env_args if a != "--keep-truncated"], "--overwrite")
    assert r.returncode == 2 and "HTTP 401" in r.stderr and "API key" in r.stderr, r.stderr
    assert json.loads((out / "manifest.json").read_text())["summary"] == again

    run = tmp_path / "student"
    r = pocketlm(
        "finetune", "--model", str(tiny_model_dir), "--data", str(out), "--out", str(run),
        "--lora-rank", "4", "--max-steps", "2", "--ctx", "32", "--batch-size", "2",
        "--precision", "fp32", "--device", "cpu", "--set", "train.threads=1",
        "--end-of-turn-prompts", "0", "--val-fraction", "0",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1] == str(run / "model")
