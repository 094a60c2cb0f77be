"""Distilling a language model through the one training loop: the student moves toward its
teacher, the task's loss is the divergence (and hard-label mix) computed by hand for every
kind, a padded teacher vocabulary is trimmed, another tokenizer is refused, a preset student
takes the teacher's tokenizer, a LoRA student trains its adapter only, chat data puts the loss
on the assistant tokens, and on-policy batches are the student's samples scored by the
teacher."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from distill_models import (
    PAD_ROWS,
    chat_file,
    chat_teacher_dir,
    distill_settings,
    other_tokenizer_model,
    padded_teacher_dir,
    student_dir,
)

from pocketlm.checkpoint.model_io import load_model
from pocketlm.common.env import DistEnv
from pocketlm.common.errors import ConfigError
from pocketlm.common.manifest import read_manifest
from pocketlm.data.loader import BatchLoader
from pocketlm.data.token_shards import TokenShards
from pocketlm.model.lora import LoRAConfig
from pocketlm.train.distill_loss import KINDS, distill_loss
from pocketlm.train.loop import train
from pocketlm.train.on_policy import SampleRequest, sample_rows
from pocketlm.train.task import Role, RunContext
from pocketlm.train.tasks.distill_lm import batch_to_device, distill, distill_factory

CPU = RunContext(torch.device("cpu"), "fp32", DistEnv(), "none", 1, 0)


@pytest.fixture(scope="module")
def student(tiny_model_dir, tmp_path_factory):
    return student_dir(tiny_model_dir, tmp_path_factory.mktemp("student") / "model")


def _task(teacher, student, tokens, config):
    return distill_factory(str(student), config, teacher_dir=teacher, tokens_dir=tokens)(CPU)


def _mean_kl(student_model, teacher_model, tokens_dir) -> float:
    """Forward KL(teacher || student) over 8 fixed validation windows of 16 tokens."""
    split = TokenShards(tokens_dir).split("val")
    x, _ = BatchLoader(split, 8, 16, shuffle=False).batch_at(0)
    x = torch.from_numpy(x)
    with torch.no_grad():
        return float(distill_loss(student_model(x), teacher_model(x)).mean())


def test_the_student_moves_toward_its_teacher(
    tiny_model_dir, student, synthetic_pipeline, tmp_path
):
    tokens = synthetic_pipeline["tokens"]
    teacher = load_model(tiny_model_dir).model
    before = _mean_kl(load_model(student).model, teacher, tokens)
    config = distill_settings("40 steps", train={"eval_every": 40})
    run = distill(str(student), tmp_path / "run", config, teacher_dir=tiny_model_dir,
                  tokens_dir=tokens)  # fmt: skip
    after = _mean_kl(load_model(run.model_dir).model, teacher, tokens)
    assert after < 0.7 * before, (before, after)
    assert {"val_loss", "val_bpb", "teacher_val_loss", "teacher_val_bpb"} <= set(run.final)
    manifest = read_manifest(run.model_dir)
    assert manifest["config"]["task"] == "distill"
    assert manifest["parents"][0]["path"] == str(tiny_model_dir.resolve())
    assert manifest["summary"]["distill"]["loss"] == "forward_kl"


@pytest.mark.parametrize("kind", KINDS)
def test_the_task_loss_is_the_divergence_computed_by_hand(
    kind, tiny_model_dir, student, synthetic_pipeline
):
    h, temperature, beta = 0.3, 2.0, 0.3
    config = distill_settings(loss=kind, hard_weight=h, temperature=temperature, beta=beta)
    task = _task(tiny_model_dir, student, synthetic_pipeline["tokens"], config)
    batch = batch_to_device(next(task.batches), CPU.device)
    total, count = task.loss(task.model, batch)
    x, y = batch["input_ids"], batch["targets"]
    teacher = load_model(tiny_model_dir).model
    with torch.no_grad():
        s, t = task.model(x), teacher(x)  # (B, T, V) each
    divergence = distill_loss(s, t, kind, temperature=temperature, beta=beta)  # (B, T)
    ce = F.cross_entropy(s.transpose(1, 2), y, reduction="none")  # (B, T)
    expected = ((1 - h) * divergence + h * ce).sum()
    assert int(count) == x.numel() == 4 * 16
    torch.testing.assert_close(total.detach(), expected, rtol=1e-5, atol=1e-5)


def test_a_padded_teacher_vocabulary_is_trimmed(
    tiny_model_dir, student, synthetic_pipeline, tmp_path
):
    padded = padded_teacher_dir(tiny_model_dir, tmp_path / "padded")
    teacher = load_model(padded).model
    vocab = load_model(student).config.vocab_size
    assert teacher.config.vocab_size == vocab + PAD_ROWS
    task = _task(padded, student, synthetic_pipeline["tokens"], distill_settings())
    batch = batch_to_device(next(task.batches), CPU.device)
    total, _ = task.loss(task.model, batch)
    with torch.no_grad():
        t_full = teacher(batch["input_ids"])  # (B, T, V + PAD_ROWS)
        s = task.model(batch["input_ids"])
    assert float(torch.softmax(t_full, -1)[..., vocab:].sum(-1).mean()) > 0.5  # padding matters
    expected = distill_loss(s, t_full[..., :vocab]).sum()
    torch.testing.assert_close(total.detach(), expected, rtol=1e-5, atol=1e-5)


def test_a_student_with_another_tokenizer_is_refused(tiny_model_dir, synthetic_pipeline, tmp_path):
    other = other_tokenizer_model(synthetic_pipeline, tiny_model_dir, tmp_path / "other")
    with pytest.raises(ConfigError, match="another tokenizer.*pocketlm synth"):
        distill_factory(str(other), distill_settings(), teacher_dir=tiny_model_dir,
                        tokens_dir=synthetic_pipeline["tokens"])  # fmt: skip


def test_a_student_with_more_rows_than_its_teacher_is_refused(
    tiny_model_dir, synthetic_pipeline, tmp_path
):
    padded = padded_teacher_dir(tiny_model_dir, tmp_path / "padded")
    with pytest.raises(ConfigError, match="vocabulary rows"):
        distill_factory(str(padded), distill_settings(), teacher_dir=tiny_model_dir,
                        tokens_dir=synthetic_pipeline["tokens"])  # fmt: skip


def test_a_preset_student_is_built_with_the_teachers_tokenizer(
    tiny_model_dir, synthetic_pipeline, tmp_path
):
    run = distill("pico-1m", tmp_path / "run", distill_settings("2 steps"),
                  teacher_dir=tiny_model_dir, tokens_dir=synthetic_pipeline["tokens"])  # fmt: skip
    student, teacher = load_model(run.model_dir), load_model(tiny_model_dir)
    assert student.config.dim == 128 and student.config.n_layers == 4  # pico-1m's shape
    assert student.config.vocab_size == teacher.tokenizer.vocab_size
    assert student.config.max_seq_len == teacher.config.max_seq_len
    assert student.tokenizer.fingerprint == teacher.tokenizer.fingerprint


def test_a_lora_student_trains_its_adapter_only(
    tiny_model_dir, student, synthetic_pipeline, tmp_path
):
    config = distill_settings("6 steps", lora=LoRAConfig(rank=4))
    factory = distill_factory(str(student), config, teacher_dir=tiny_model_dir,
                              tokens_dir=synthetic_pipeline["tokens"])  # fmt: skip
    task = factory(CPU)
    assert task.name == "distill+lora" and set(task.roles.values()) == {Role.ADAPTER}
    assert all("lora_" in name for name in task.roles)
    run = distill(str(student), tmp_path / "run", config, teacher_dir=tiny_model_dir,
                  tokens_dir=synthetic_pipeline["tokens"])  # fmt: skip
    manifest = read_manifest(run.model_dir)
    assert manifest["kind"] == "adapter"
    assert manifest["parents"][0]["path"] == str(student.resolve())  # the adapter's base


def test_a_lora_adapter_needs_a_student_directory(tiny_model_dir, synthetic_pipeline):
    with pytest.raises(ConfigError, match="LoRA"):
        distill_factory("pico-1m", distill_settings(lora=LoRAConfig(rank=4)), teacher_dir=tiny_model_dir,
                        tokens_dir=synthetic_pipeline["tokens"])  # fmt: skip


def test_chat_data_puts_the_loss_on_the_assistant_tokens(synthetic_pipeline, tmp_path):
    teacher = chat_teacher_dir(synthetic_pipeline["tokenizer"], tmp_path / "teacher")
    pupil = student_dir(teacher, tmp_path / "student")
    data = [str(chat_file(tmp_path / "chats.jsonl"))]
    config = distill_settings(train={"ctx": 64}, hard_weight=0.5)
    task = distill_factory(str(pupil), config, teacher_dir=teacher, data_files=data)(CPU)
    batch = batch_to_device(next(task.batches), CPU.device)
    total, count = task.loss(task.model, batch)
    mask = batch["targets"] != -100
    assert 0 < int(count) == int(mask.sum()) < mask.numel()
    packed = {k: batch[k] for k in ("positions", "doc_ids")}
    with torch.no_grad():
        s = task.model(batch["input_ids"], **packed)[mask]
        t = load_model(teacher).model(batch["input_ids"], **packed)[mask]
    ce = F.cross_entropy(s, batch["targets"][mask], reduction="none")
    expected = (0.5 * distill_loss(s, t) + 0.5 * ce).sum()
    torch.testing.assert_close(total.detach(), expected, rtol=1e-5, atol=1e-5)
    run = distill(str(pupil), tmp_path / "run", distill_settings("3 steps", train={"ctx": 64}),
                  teacher_dir=teacher, data_files=data)  # fmt: skip
    assert "val_loss" in run.final and "teacher_val_loss" in run.final


def test_on_policy_batches_are_the_students_samples_scored_by_the_teacher(
    tiny_model_dir, student, synthetic_pipeline, tmp_path
):
    config = distill_settings(on_policy=0.5, loss="reverse_kl", prompt_tokens=6)
    task = _task(tiny_model_dir, student, synthetic_pipeline["tokens"], config)
    first, second = next(task.batches), next(task.batches)  # batch 1 of every 2 is sampled
    assert isinstance(first, dict) and isinstance(second, SampleRequest)
    assert [len(p) for p in second.prompts] == [6] * 4 and second.length == 16
    total, count = task.loss(task.model, batch_to_device(second, CPU.device))
    assert int(count) == 4 * (16 - 6)  # the positions the student sampled from
    ids, sampled = sample_rows(task.model, second, CPU.device)  # the same seed: the same rows
    assert ids.shape == (4, 16) and ids[:, :6].tolist() == second.prompts
    with torch.no_grad():
        s = task.model(ids)[sampled]
        t = load_model(tiny_model_dir).model(ids)[sampled]
    torch.testing.assert_close(total.detach(), distill_loss(s, t, "reverse_kl").sum(),
                               rtol=1e-5, atol=1e-5)  # fmt: skip
    run = distill(str(student), tmp_path / "run", distill_settings("4 steps", on_policy=0.5),
                  teacher_dir=tiny_model_dir, tokens_dir=synthetic_pipeline["tokens"])  # fmt: skip
    assert run.steps == 4


def test_chat_on_policy_samples_replies_to_conversation_prompts(synthetic_pipeline, tmp_path):
    teacher = chat_teacher_dir(synthetic_pipeline["tokenizer"], tmp_path / "teacher")
    data = [str(chat_file(tmp_path / "chats.jsonl"))]
    config = distill_settings(train={"ctx": 64}, on_policy=1.0)
    task = distill_factory(str(teacher), config, teacher_dir=teacher, data_files=data)(CPU)
    request = next(task.batches)
    assert isinstance(request, SampleRequest) and request.stop_ids
    end = load_model(teacher).tokenizer.end_of_turn_id
    assert all(p[-1] != end for p in request.prompts)  # they end with the reply's header
    total, count = task.loss(task.model, request)
    assert int(count) > 0  # the teacher distils itself: nothing to learn
    assert float(total.detach()) == pytest.approx(0.0, abs=1e-4)


def test_an_interrupted_on_policy_run_resumes_to_the_same_weights(
    tiny_model_dir, student, synthetic_pipeline, tmp_path
):
    config = distill_settings("6 steps", train={"checkpoint_every": 2}, on_policy=0.5)
    tokens = synthetic_pipeline["tokens"]
    whole = distill(str(student), tmp_path / "whole", config, teacher_dir=tiny_model_dir,
                    tokens_dir=tokens)  # fmt: skip
    factory = distill_factory(str(student), config, teacher_dir=tiny_model_dir, tokens_dir=tokens)

    class Interrupt(Exception):
        pass

    def dying(ctx):
        task = factory(ctx)
        inner, calls = task.batches, {"n": 0}

        class Dying:
            def __next__(self):
                calls["n"] += 1
                if calls["n"] == 6:  # in step 6, after the checkpoint of step 4
                    raise Interrupt
                return next(inner)

            state_dict, load_state_dict = inner.state_dict, inner.load_state_dict

        task.batches = Dying()
        return task

    with pytest.raises(Interrupt):
        train(dying, config.train, tmp_path / "cut")
    resumed = distill(str(student), tmp_path / "cut", config, teacher_dir=tiny_model_dir,
                      tokens_dir=tokens, resume=True)  # fmt: skip
    a = load_model(whole.model_dir).model.state_dict()
    b = load_model(resumed.model_dir).model.state_dict()
    assert set(a) == set(b) and all(torch.equal(a[n], b[n]) for n in a)
