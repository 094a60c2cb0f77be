"""Black-box distillation end to end: PocketLM's own server (a tiny model) as the teacher on
127.0.0.1, `pocketlm synth --top-logprobs 4` on a few prompts, then `pocketlm distill --data OUT`
with no teacher: the student learns from the stored targets and its KL to the teacher on the
replies goes down."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

import torch

from tests.integration.live_server import SlowBackend, live_server

PROMPTS = [
    "the little cat", "a dog and a fox", "why is the sea blue", "the sun", "an owl",
    "a red boat", "the big tree", "rain and wind", "a small bird", "the moon at night",
    "one happy child", "a cold morning",
]  # fmt: skip


def pocketlm(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "POCKETLM_NO_PROGRESS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "pocketlm", *args],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip


def _models(tiny_model_dir: Path, base: Path) -> tuple[Path, Path]:
    """A peaked teacher (the tiny model, its logits scaled by its final norm) and a fresh
    1-layer student with its tokenizer."""
    import dataclasses

    from pocketlm.checkpoint.model_io import load_model, save_model
    from pocketlm.model.transformer import build_model

    teacher = load_model(tiny_model_dir)
    with torch.no_grad():
        teacher.model.model.norm.weight.mul_(8.0)
    teacher_dir = save_model(base / "teacher", teacher.model, tiny_model_dir)
    config = dataclasses.replace(teacher.config, dim=16, n_layers=1, n_heads=2, n_kv_heads=1,
                                 ffn_dim=32)  # fmt: skip
    return teacher_dir, save_model(base / "student", build_model(config, seed=5), tiny_model_dir)


def _banned(tokenizer) -> list[int]:
    """Tokens the served teacher never writes, so that its replies are 10 tokens of whole
    characters: the stop tokens, whitespace-only tokens and pieces of a character (a tiny
    random model writes them alone; their bytes would not spell the reply's text)."""
    return [*tokenizer.stop_ids, *(
        i for i in range(tokenizer.vocab_size)
        if i not in tokenizer.special_ids
        and (not tokenizer.decode([i]).strip() or "\ufffd" in tokenizer.decode([i]))
    )]  # fmt: skip


def _reply_kl(student_dir: Path, teacher_dir: Path, records: list[dict]) -> float:
    """The full KL(teacher || student) per reply token, over the records' replies (the
    teacher as served: _banned's tokens banned)."""
    from pocketlm.checkpoint.model_io import load_model
    from pocketlm.data.sft_tokens import sft_tokens
    from pocketlm.tokenizer.tokenizer import Tokenizer
    from pocketlm.train.distill_loss import distill_loss

    tokenizer = Tokenizer.load(teacher_dir)
    banned = _banned(tokenizer)
    student, teacher = (load_model(d).model.eval() for d in (student_dir, teacher_dir))
    total = count = 0.0
    for record in records:
        tokens = sft_tokens(tokenizer, record["messages"])
        ids = torch.tensor([tokens.ids])
        stops = sorted(tokenizer.stop_ids)
        mask = torch.tensor(tokens.loss_mask[1:]) & ~torch.isin(ids[0, 1:], torch.tensor(stops))
        with torch.no_grad():  # (N, V) each, at the positions predicting a reply token
            s, t = student(ids)[0, :-1][mask], teacher(ids)[0, :-1][mask]
        t[:, banned] = -1e9
        total += float(distill_loss(s, t).sum())
        count += int(mask.sum())
    return total / count


@pytest.mark.slow
def test_synth_from_pocketlm_serve_then_distill_from_the_stored_targets(tiny_model_dir, tmp_path):
    from pocketlm.engine.load import open_backend
    from pocketlm.engine.scheduler import BatchScheduler

    teacher_dir, student_dir = _models(tiny_model_dir, tmp_path)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    out = tmp_path / "synth"
    opened, tokenizer = open_backend(teacher_dir, slots=2, threads=1)
    scheduler = BatchScheduler(SlowBackend(opened, _banned(tokenizer), 0.0), tokenizer)
    with live_server(scheduler, tokenizer) as server:
        r = pocketlm(
            "synth", "--teacher-url", server.url, "--prompts", str(prompts), "--out", str(out),
            "--top-logprobs", "4", "--max-tokens", "10", "--temperature", "1.0", "--seed", "3",
            "--keep-truncated", "--concurrency", "2",
        )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    records = [json.loads(x) for x in (out / "data.jsonl").read_text().splitlines()]
    assert len(records) >= 8 and all(rec["teacher"].get("logprobs") for rec in records)

    run = tmp_path / "run"
    r = pocketlm(
        "distill", "--data", str(out), "--student", str(student_dir), "--out", str(run),
        "--max-steps", "30", "--ctx", "32", "--batch-size", "4", "--lr", "1e-2",
        "--precision", "fp32", "--device", "cpu", "--val-fraction", "0",
        "--set", "train.threads=1", "--set", "train.optim.kind=adamw",
        "--set", "train.optim.weight_decay=0", "--set", "train.schedule.kind=constant",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1] == str(run / "model")
    assert "assistant positions aligned" in r.stderr
    summary = json.loads((run / "model" / "manifest.json").read_text())["summary"]
    share = summary["distill_data"]["stored_targets"]
    assert share["records_with_targets"] == share["records"] == len(records)
    assert share["aligned_share"] > 0.6, share  # the teacher's own tokenizer: nearly all align
    assert summary["distill"]["data"] == "synth" and summary["teacher"] == str(out.resolve())

    before = _reply_kl(student_dir, teacher_dir, records)
    after = _reply_kl(run / "model", teacher_dir, records)
    assert after < 0.6 * before, (before, after)
