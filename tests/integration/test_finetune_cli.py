"""LoRA from the command line: `finetune --lora-rank` makes an adapter that generate and eval
open on its base, `merge` folds into a model the native engine runs, `export peft` writes peft's
files; another base is refused with exit 2 and a message."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def pocketlm(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "POCKETLM_NO_PROGRESS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "pocketlm", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def test_finetune_lora_then_generate_eval_merge_and_export(
    tiny_model_dir, synthetic_pipeline, tmp_path
):
    tokens, base, run = synthetic_pipeline["tokens"], str(tiny_model_dir), tmp_path / "lora"
    r = pocketlm(
        "finetune", "--model", base, "--tokens", str(tokens), "--out", str(run),
        "--lora-rank", "4", "--lora-targets", "q_proj,v_proj", "--max-steps", "3", "--ctx", "32",
        "--batch-size", "4", "--precision", "fp32", "--device", "cpu",
        "--set", "train.threads=1", "--set", "train.eval_tokens=256",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == str(run / "model")

    prompt = ["--prompt", "the little", "--temperature", "0", "--max-new-tokens", "4"]
    r = pocketlm("generate", "--model", base, "--adapter", str(run), *prompt, "--device", "cpu")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "backend torch" in r.stderr

    r = pocketlm("eval", "--model", base, "--adapter", str(run), "--tokens", str(tokens), "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout)["loss"] > 0

    merged = tmp_path / "merged"
    r = pocketlm("merge", "--model", base, "--adapter", str(run), "--out", str(merged))
    assert r.returncode == 0 and r.stdout.strip() == str(merged), r.stderr[-2000:]
    r = pocketlm("generate", "--model", str(merged), *prompt, "--backend", "native")
    assert r.returncode == 0, r.stderr[-2000:]

    r = pocketlm(
        "export", "peft", "--model", base, "--adapter", str(run), "--out", str(tmp_path / "p")
    )
    assert r.returncode == 0, r.stderr[-2000:]
    config = json.loads((tmp_path / "p" / "adapter_config.json").read_text())
    assert config["target_modules"] == ["q_proj", "v_proj"] and config["r"] == 4

    r = pocketlm(
        "merge", "--model", str(merged), "--adapter", str(run), "--out", str(tmp_path / "x")
    )
    assert r.returncode == 2 and "was trained on the base" in r.stderr


def test_finetune_on_chat_records_trains_the_replies_and_chats_with_the_adapter(
    tiny_model_dir, tmp_path
):
    """`finetune --data` on chat records (two formats in one run, a validation file): an
    adapter whose held-out loss is on assistant tokens, then a chat reply through it; a bad
    record stops with its file and line, or is counted with --on-bad-record skip."""
    words = ["cat", "dog", "sun", "sea", "fox", "owl"]
    chats = tmp_path / "chats.jsonl"
    chats.write_text("".join(
        json.dumps({"messages": [{"role": "user", "content": a}, {"role": "assistant", "content": b}]}) + "\n"
        for a in words for b in words
    ) + "".join(json.dumps({"prompt": a, "completion": a}) + "\n" for a in words))  # fmt: skip
    val = tmp_path / "val.jsonl"
    val.write_text(json.dumps({"instruction": "say", "input": "cat", "output": "cat"}) + "\n")
    base, run = str(tiny_model_dir), tmp_path / "chat"
    common = [
        "--lora-rank", "4", "--max-steps", "3", "--ctx", "32", "--batch-size", "2",
        "--precision", "fp32", "--device", "cpu", "--set", "train.threads=1",
    ]  # fmt: skip
    r = pocketlm("finetune", "--model", base, "--data", str(chats), "--val", str(val),
                 "--out", str(run), *common)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert "end-of-turn rate" in r.stdout and "1 held-out prompts" in r.stdout, r.stdout
    assert "warning:" not in r.stderr, r.stderr  # the base's template and stop ids agree
    assert "(assistant tokens)" in r.stdout and r.stdout.strip().splitlines()[-1] == str(
        run / "model"
    )
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x]
    assert rows[-1]["val_loss"] > 0

    r = subprocess.run(
        [sys.executable, "-m", "pocketlm", "chat", "--model", base, "--adapter", str(run),
         "--max-tokens", "4", "--temperature", "0"],
        input="cat\n", capture_output=True, text=True, timeout=300,
        env={**os.environ, "POCKETLM_NO_PROGRESS": "1"},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]

    bad = tmp_path / "bad.jsonl"
    bad.write_text(chats.read_text() + '{"messages": [{"role": "robot", "content": "x"}]}\n')
    r = pocketlm(
        "finetune", "--model", base, "--data", str(bad), "--out", str(tmp_path / "b"), *common
    )
    assert r.returncode == 2 and "bad.jsonl, line 43" in r.stderr and "robot" in r.stderr, r.stderr
    r = pocketlm("finetune", "--model", base, "--data", str(bad), "--on-bad-record", "skip",
                 "--out", str(tmp_path / "s"), *common)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
