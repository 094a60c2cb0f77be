"""Black-box distillation from the targets `pocketlm synth` stores (no live teacher, no cache):
the task's loss is the sparse forward KL at aligned positions mixed with the hard label and
the hard label alone elsewhere, the aligned share is reported, the student moves toward the
teacher that wrote the targets, and data or settings it cannot serve are refused."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from distill_models import distill_settings, sharp_teacher_dir, student_dir

from pocketlm.checkpoint.model_io import load_model
from pocketlm.common.env import DistEnv
from pocketlm.common.errors import ConfigError, InputError
from pocketlm.common.manifest import read_manifest
from pocketlm.data.sft_examples import SFTDataConfig
from pocketlm.data.sft_tokens import sft_tokens
from pocketlm.data.synth.replies import sparse_targets
from pocketlm.engine.generation import TokenLogprob
from pocketlm.serve.openai_responses import TokenTexts, chat_logprobs
from pocketlm.tokenizer.tokenizer import Tokenizer
from pocketlm.train.config import OptimConfig
from pocketlm.train.distill_loss import distill_loss, sparse_forward_kl
from pocketlm.train.task import RunContext
from pocketlm.train.tasks.distill_lm import batch_to_device, distill, distill_factory
from pocketlm.train.tasks.distill_synth_source import synth_source
from tests.conftest import make_sentence

CPU = RunContext(torch.device("cpu"), "fp32", DistEnv(), "none", 1, 0)


def synth_records(teacher_dir: Path, path: Path, n: int = 24, k: int = 4, bare: int = 0) -> Path:
    """Chat records as `pocketlm synth` writes them from PocketLM's server running the teacher:
    each reply's tokens with the teacher's top-k log-probabilities in context (the server's
    logprobs object, read by synth); the last `bare` records without targets."""
    model = load_model(teacher_dir).model.eval()
    tokenizer = Tokenizer.load(teacher_dir)
    texts = TokenTexts(tokenizer)
    rng = random.Random(0)
    lines = []
    for r in range(n):
        messages = [{"role": "user", "content": make_sentence(rng, 3)},
                    {"role": "assistant", "content": make_sentence(rng, 6)}]  # fmt: skip
        record = {"id": f"p{r}", "messages": messages, "teacher": {"model": "tiny"}}
        if r < n - bare:
            tokens = sft_tokens(tokenizer, messages)
            start = tokens.loss_mask.index(True)
            end = len(tokens.loss_mask) - tokens.loss_mask[::-1].index(True) - 1  # end of turn
            with torch.no_grad():
                logp = F.log_softmax(model(torch.tensor([tokens.ids]))[0], dim=-1)  # (T, V)
            entries = []
            for i in range(start, end):
                top = logp[i - 1].topk(k)
                entries.append(TokenLogprob(tokens.ids[i], float(logp[i - 1, tokens.ids[i]]),
                    tuple(zip(top.indices.tolist(), top.values.tolist(), strict=True))))  # fmt: skip
            record["teacher"]["logprobs"] = sparse_targets(chat_logprobs(entries, texts))
        lines.append(json.dumps(record))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def pair(tiny_model_dir, tmp_path_factory):
    base = tmp_path_factory.mktemp("synth-distill")
    teacher = sharp_teacher_dir(tiny_model_dir, base / "teacher")
    data = synth_records(teacher, base / "data.jsonl", bare=4)
    return teacher, student_dir(tiny_model_dir, base / "student"), data


def _config(budget: str = "4 steps", h: float = 0.0, **train):
    return distill_settings(budget, train={"ctx": 32, **train}, hard_weight=h,
                            data=SFTDataConfig(val_fraction=0.0))  # fmt: skip


def test_the_loss_is_the_sparse_kl_where_aligned_and_the_hard_label_elsewhere(pair):
    _, student, data = pair
    h = 0.3
    task = distill_factory(str(student), _config(h=h), data_files=[str(data)])(CPU)
    batch = batch_to_device(next(task.batches), CPU.device)
    total, count = task.loss(task.model, batch)
    mask = batch["targets"] != -100
    valid = batch["teacher_valid"][mask]
    assert int(count) == int(mask.sum()) and 0 < int(valid.sum()) < int(count)
    packed = {k: batch[k] for k in ("positions", "doc_ids")}
    with torch.no_grad():
        s = task.model(batch["input_ids"], **packed)[mask]  # (N, V)
    ce = F.cross_entropy(s, batch["targets"][mask], reduction="none")
    kl = sparse_forward_kl(s[valid], batch["teacher_ids"][mask][valid],
                           batch["teacher_logprobs"][mask][valid])  # fmt: skip
    expected = ((1 - h) * kl + h * ce[valid]).sum() + ce[~valid].sum()
    torch.testing.assert_close(total.detach(), expected, rtol=1e-5, atol=1e-5)


def test_on_the_teachers_tokenizer_every_reply_token_aligns(pair):
    _, student, data = pair
    tc = _config().train
    tokenizer = Tokenizer.load(student)
    src = synth_source([str(data)], [], tokenizer, SFTDataConfig(val_fraction=0.0), tc)
    share = src.report["stored_targets"]
    assert share["records"] == 24 and share["records_with_targets"] == 20
    # every assistant position of the 20 records but their end-of-turn token
    rng = random.Random(0)
    reply_tokens = 0
    for r in range(24):
        messages = [{"role": "user", "content": make_sentence(rng, 3)},
                    {"role": "assistant", "content": make_sentence(rng, 6)}]  # fmt: skip
        if r < 20:
            reply_tokens += sum(sft_tokens(tokenizer, messages).loss_mask) - 1
    assert share["aligned_positions"] == reply_tokens
    assert share["teacher_models"] == {"tiny": 24}
    assert 0.7 < share["aligned_share"] < 1.0


def test_the_student_moves_toward_the_teacher_that_wrote_the_targets(pair, tmp_path):
    teacher_dir, student, data = pair
    teacher = load_model(teacher_dir).model.eval()
    task = distill_factory(str(student), _config(), data_files=[str(data)])(CPU)
    batches = [batch_to_device(next(task.batches), CPU.device) for _ in range(3)]

    def mean_kl(model) -> float:  # the full KL(teacher || student) on the replies
        total = n = 0.0
        with torch.no_grad():
            for b in batches:
                mask = b["teacher_valid"]
                args = (b["input_ids"],)
                packed = {k: b[k] for k in ("positions", "doc_ids")}
                total += float(distill_loss(model(*args, **packed)[mask],
                                            teacher(*args, **packed)[mask]).sum())  # fmt: skip
                n += int(mask.sum())
        return total / n

    before = mean_kl(load_model(student).model.eval())
    run = distill(
        str(student),
        tmp_path / "run",
        _config("30 steps", optim=OptimConfig(kind="adamw", lr=1e-2, weight_decay=0.0)),
        data_files=[str(data)],
    )
    after = mean_kl(load_model(run.model_dir).model.eval())
    assert after < 0.6 * before, (before, after)
    summary = read_manifest(run.model_dir)["summary"]
    assert summary["distill"] == {
        **summary["distill"],
        "loss": "sparse_forward_kl",
        "data": "synth",
    }
    assert summary["distill_data"]["stored_targets"]["aligned_positions"] > 0
    assert summary["teacher"] == str(data.resolve())


def test_held_out_records_report_the_students_kl_to_the_stored_targets(pair, tmp_path):
    _, student, data = pair
    config = distill_settings("2 steps", train={"ctx": 32}, data=SFTDataConfig(val_fraction=0.25))
    run = distill(str(student), tmp_path / "run", config, data_files=[str(data)])
    assert run.final["val_teacher_kl"] > 0 and run.final["val_loss"] > 0


def test_records_without_targets_are_refused_with_a_pointer_to_finetune(pair, tmp_path):
    teacher_dir, student, _ = pair
    bare = synth_records(teacher_dir, tmp_path / "bare.jsonl", n=6, bare=6)
    with pytest.raises(InputError, match="no training record .* stored teacher targets") as err:
        distill_factory(str(student), _config(), data_files=[str(bare)])
    assert "pocketlm finetune" in str(err.value)


def test_settings_stored_targets_cannot_serve_are_refused(pair, synthetic_pipeline):
    _, student, data = pair
    files = [str(data)]
    for bad, match in (
        (distill_settings(loss="reverse_kl"), "forward KL"),
        (distill_settings(top_k=2), "forward KL"),
        (distill_settings(on_policy=0.5, train={"ctx": 32}), "on-policy"),
    ):
        with pytest.raises(ConfigError, match=match):
            distill_factory(str(student), bad, data_files=files)
    with pytest.raises(ConfigError, match="no tokenizer"):
        distill_factory("nano-3m", _config(), data_files=files)
    with pytest.raises(ConfigError, match="--teacher"):
        distill_factory(str(student), _config(), tokens_dir=synthetic_pipeline["tokens"])
