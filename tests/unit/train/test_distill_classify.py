"""Distilling a classifier into a smaller student through the one training loop: the student is
the teacher's every second layer at step 0, learns the task, its loss is the weighted sum of the
soft-target, hard-label and hidden-state cosine terms (the soft one with T² KL's gradient), an
encoder teacher works as a decoder does, mismatched students are refused, and an interrupted
run resumes to the same weights."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F
from test_classify_task import LABELS, marker_task
from test_classify_task import settings as classify_settings

from pocketlm.checkpoint.model_io import load_model, save_model
from pocketlm.common.config import load_config
from pocketlm.common.env import DistEnv
from pocketlm.common.errors import ConfigError
from pocketlm.common.manifest import read_manifest
from pocketlm.data.classify_loader import eval_batches, make_batch
from pocketlm.model.transformer import build_model
from pocketlm.train.config import OptimConfig
from pocketlm.train.loop import train
from pocketlm.train.task import RunContext
from pocketlm.train.tasks.classify import held_out_metrics, train_classifier
from pocketlm.train.tasks.distill_classify import (
    DistillClassifyConfig,
    distill_classifier,
    distill_classify_task_factory,
    teacher_labels,
)

ADAMW = OptimConfig(kind="adamw", lr=3e-3, weight_decay=0.0)


def distill_settings(budget: str = "6 steps", eval_every: int = 0, **options):
    """The classify tests' loop settings (fp32, CPU, batch 16) at lr 3e-3, for distillation."""
    train = classify_settings(budget=budget, optim=ADAMW, eval_every=eval_every).train
    return DistillClassifyConfig(train=train, **options)


def context() -> RunContext:
    return RunContext(torch.device("cpu"), "fp32", DistEnv(), "none", 1, 0)


def _classifier_dir(tiny_model_dir, out, **changes):
    """A fresh classifier over LABELS of the tiny model's vocabulary and tokenizer."""
    base = load_model(tiny_model_dir).config
    config = dataclasses.replace(base, labels=LABELS, n_layers=4, **changes)
    return save_model(out, build_model(config, seed=3), tiny_model_dir)


@pytest.fixture(scope="module")
def decoder_teacher(tiny_model_dir, tmp_path_factory):
    """A 4-layer decoder classifier trained on the marker task (val accuracy >= 0.9)."""
    root = tmp_path_factory.mktemp("decoder-teacher")
    start = _classifier_dir(tiny_model_dir, root / "start")
    run = train_classifier(
        start, None, marker_task(512, 0), marker_task(128, 1), root / "run",
        classify_settings(budget="100 steps", eval_every=100, optim=ADAMW),
    )  # fmt: skip
    assert run.final["val_accuracy"] >= 0.9
    return run.model_dir


@pytest.fixture(scope="module")
def encoder_teacher(tiny_model_dir, tmp_path_factory):
    """A 4-layer BERT-like classifier (bidirectional, post-norm, learned positions, pooler)
    trained briefly on the marker task."""
    root = tmp_path_factory.mktemp("encoder-teacher")
    start = _classifier_dir(
        tiny_model_dir, root / "start", causal=False, position_kind="learned", type_vocab_size=2,
        embed_norm=True, norm_position="post", norm_kind="layer", mlp_kind="plain",
        activation="gelu", qkv_bias=True, o_bias=True, mlp_bias=True, tie_embeddings=False,
        pooling="first", pooler="tanh", classifier_bias=True, rope_theta=10000.0,
    )  # fmt: skip
    run = train_classifier(
        start, None, marker_task(512, 0), None, root / "run",
        classify_settings(budget="40 steps", optim=ADAMW),
    )  # fmt: skip
    return run.model_dir


def _starts_from_even_layers(task, teacher_dir) -> None:
    """The task's student at step 0: layers 0, 2 of the 4-layer teacher, every other tensor."""
    teacher = load_model(teacher_dir).model.state_dict()
    student = task.model.state_dict()
    assert task.model.config.n_layers == 2
    for name, tensor in student.items():
        source = name
        for new, old in ((0, 0), (1, 2)):
            source = source.replace(f"model.layers.{new}.", f"model.layers.{old}.")
            if source != name:
                break
        assert torch.equal(tensor, teacher[source]), name


def _val_metrics(model, val) -> dict[str, float]:
    return held_out_metrics(model, eval_batches(val, 16, 0), torch.device("cpu"))


def test_an_every_other_layer_student_learns_from_its_decoder_teacher(decoder_teacher, tmp_path):
    config = distill_settings("60 steps", eval_every=60)
    data, val = marker_task(512, 0), marker_task(128, 1)
    task = distill_classify_task_factory(decoder_teacher, data, val, config)(context())
    _starts_from_even_layers(task, decoder_teacher)
    before = _val_metrics(task.model, val)
    run = distill_classifier(decoder_teacher, data, val, tmp_path / "run", config)
    assert before["val_accuracy"] < 0.85 and run.final["val_accuracy"] >= 0.95
    assert run.final["teacher_val_accuracy"] >= 0.9
    student = load_model(run.model_dir)
    assert student.config.labels == LABELS and student.config.n_layers == 2
    manifest = read_manifest(run.model_dir)
    assert manifest["parents"][0]["path"] == str(decoder_teacher.resolve())
    assert manifest["config"]["task"] == "distill_classify"
    summary = manifest["summary"]
    assert summary["teacher_val_accuracy"] == run.final["teacher_val_accuracy"]
    assert summary["cosine"].startswith("on") and summary["student"] == "teacher layers [0, 2]"
    assert summary["params"] < summary["teacher_params"]
    assert teacher_labels(decoder_teacher) == LABELS


def _batch(n: int = 8) -> dict[str, torch.Tensor]:
    batch = make_batch(marker_task(n, 5), range(n), pad_id=0)
    return {k: torch.from_numpy(v) for k, v in batch.items()}


def _hidden_hook(model, store: list):
    return model.model.norm.register_forward_hook(lambda m, a, out: store.append(out))


def _by_hand(student, teacher, batch, config):
    """Mean over the examples of the three weighted terms, each written out."""
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    hidden: list = []
    handles = [_hidden_hook(student, hidden), _hidden_hook(teacher, hidden)]
    with torch.no_grad():
        t_logits = teacher(ids, attention_mask=mask)
    s_logits = student(ids, attention_mask=mask)
    for handle in handles:
        handle.remove()
    t_hidden, s_hidden = hidden
    temp = config.temperature
    p_t = (t_logits / temp).softmax(-1)
    kl = (p_t * ((t_logits / temp).log_softmax(-1) - (s_logits / temp).log_softmax(-1))).sum(-1)
    ce = F.cross_entropy(s_logits, labels, reduction="none")
    cos = 1 - F.cosine_similarity(s_hidden, t_hidden, dim=-1)  # (B, T)
    cos = (cos * mask).sum(1) / mask.sum(1)
    terms = config.alpha_soft * temp**2 * kl + config.alpha_hard * ce + config.alpha_cos * cos
    return terms.mean()


def test_the_loss_is_the_weighted_sum_of_its_three_terms(decoder_teacher):
    config = distill_settings(temperature=3.0, alpha_soft=0.7, alpha_hard=0.2, alpha_cos=0.4)
    data = marker_task(32, 0)
    task = distill_classify_task_factory(decoder_teacher, data, None, config)(context())
    with torch.no_grad():  # move the student away from the teacher: every term non-zero
        for p in task.model.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.05)
    batch = _batch()
    total, count = task.loss(task.model, batch)
    assert count == 8
    teacher = load_model(decoder_teacher).model
    expected = _by_hand(task.model, teacher, batch, config)
    torch.testing.assert_close(total / count, expected, rtol=1e-5, atol=1e-6)
    # with alpha_cos 0 the hidden states are not needed: the same sum without that term
    no_cos = dataclasses.replace(config, alpha_cos=0.0)
    plain = distill_classify_task_factory(decoder_teacher, data, None, no_cos)(context())
    plain.model.load_state_dict(task.model.state_dict())
    total, _ = plain.loss(plain.model, batch)
    torch.testing.assert_close(total / 8, _by_hand(plain.model, teacher, batch, no_cos))


def test_the_soft_target_gradient_is_that_of_t2_kl(decoder_teacher):
    temp = 4.0
    config = distill_settings(temperature=temp, alpha_soft=1.0, alpha_hard=0.0, alpha_cos=0.0)
    task = distill_classify_task_factory(decoder_teacher, marker_task(16, 0), None, config)(
        context()
    )
    student = task.model
    with torch.no_grad():
        student.score.weight.mul_(-0.5)  # a student that disagrees with its teacher
    batch = _batch()
    params = [student.score.weight, student.model.layers[1].mlp.up_proj.weight]
    total, _ = task.loss(student, batch)
    got = torch.autograd.grad(total, params)
    teacher = load_model(decoder_teacher).model
    with torch.no_grad():
        t_logits = teacher(batch["input_ids"], attention_mask=batch["attention_mask"])
    s_logits = student(batch["input_ids"], attention_mask=batch["attention_mask"])
    kl = F.kl_div(
        (s_logits / temp).log_softmax(-1), (t_logits / temp).log_softmax(-1),
        log_target=True, reduction="sum",
    )  # fmt: skip
    want = torch.autograd.grad(temp**2 * kl, params)
    assert float(got[0].abs().max()) > 1e-4
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-7)


def test_an_encoder_teacher_distils_into_half_its_layers(encoder_teacher, tmp_path):
    config = distill_settings("30 steps", eval_every=30)
    data, val = marker_task(256, 0), marker_task(64, 1)
    task = distill_classify_task_factory(encoder_teacher, data, val, config)(context())
    _starts_from_even_layers(task, encoder_teacher)
    assert not task.model.config.causal and task.describe["cosine"].startswith("on")
    before = _val_metrics(task.model, val)
    run = distill_classifier(encoder_teacher, data, val, tmp_path / "run", config)
    assert run.final["val_loss"] < 0.8 * before["val_loss"]
    student = load_model(run.model_dir)
    assert student.config.n_layers == 2 and student.config.pooler == "tanh"
    # the student does as well as its teacher, whatever the briefly trained teacher reached
    assert run.final["val_accuracy"] >= run.final["teacher_val_accuracy"] - 0.1
    assert run.final["val_accuracy"] >= 0.7


def test_explicit_layers_and_a_narrower_student_model(decoder_teacher, tiny_model_dir, tmp_path):
    data = marker_task(32, 0)
    config = distill_settings(student_layers=(1, 3))
    task = distill_classify_task_factory(decoder_teacher, data, None, config)(context())
    teacher = load_model(decoder_teacher).model
    assert torch.equal(
        task.model.model.layers[0].self_attn.q_proj.weight,
        teacher.model.layers[1].self_attn.q_proj.weight,
    )
    # a student of another width: trained with the soft and hard terms, the cosine off
    narrow = _classifier_dir(tiny_model_dir, tmp_path / "narrow", dim=16, n_heads=1, ffn_dim=32)
    run = distill_classifier(
        decoder_teacher, data, None, tmp_path / "run", distill_settings("2 steps"),
        student_dir=narrow,
    )  # fmt: skip
    summary = read_manifest(run.model_dir)["summary"]
    assert summary["cosine"].startswith("off: the student's width 16 differs")
    described = json.loads((tmp_path / "run" / "run_config.json").read_text())
    assert described["cosine"] == summary["cosine"]
    assert [p["path"] for p in read_manifest(run.model_dir)["parents"][:2]] == [
        str(decoder_teacher.resolve()),
        str(narrow.resolve()),
    ]


def test_mismatched_students_and_settings_are_refused(
    decoder_teacher, tiny_model_dir, tiny_classifier_dir, synthetic_pipeline, tmp_path
):
    from pocketlm.tokenizer.train import TokenizerConfig, train_tokenizer

    data = marker_task(8, 0)
    with pytest.raises(ConfigError, match="not a classifier"):
        distill_classify_task_factory(tiny_model_dir, data, None, distill_settings())
    with pytest.raises(ConfigError, match="teacher's labels"):
        distill_classify_task_factory(
            decoder_teacher, data, None, distill_settings(), student_dir=tiny_classifier_dir
        )
    other = train_tokenizer(
        synthetic_pipeline["corpus"], tmp_path / "tok", TokenizerConfig(vocab_size=300)
    )
    config = dataclasses.replace(load_model(decoder_teacher).config, n_layers=1)
    foreign = save_model(tmp_path / "foreign", build_model(config), other)
    with pytest.raises(ConfigError, match="different tokenizers"):
        distill_classify_task_factory(
            decoder_teacher, data, None, distill_settings(), student_dir=foreign
        )
    with pytest.raises(ConfigError, match="leave it"):
        distill_classify_task_factory(
            decoder_teacher, data, None, distill_settings(student_layers=(0,)),
            student_dir=decoder_teacher,
        )  # fmt: skip
    with pytest.raises(ConfigError, match="0..3"):
        distill_classify_task_factory(
            decoder_teacher, data, None, distill_settings(student_layers=(0, 4))
        )
    for bad in ({"kind": "kl"}, {"temperature": 0.0}, {"alpha_hard": -1.0},
                {"alpha_soft": 0.0, "alpha_hard": 0.0, "alpha_cos": 0.0},
                {"student_layers": "odd"}, {"student_layers": ()}):  # fmt: skip
        with pytest.raises(ConfigError):
            DistillClassifyConfig(**bad)


def test_settings_load_from_overrides():
    assert load_config(DistillClassifyConfig).student_layers == "every_other"
    loaded = load_config(
        DistillClassifyConfig, overrides=["student_layers=0,3", "temperature=4", "kind=jsd"]
    )
    assert loaded.student_layers == (0, 3) and loaded.temperature == 4.0 and loaded.kind == "jsd"
    assert load_config(DistillClassifyConfig, overrides=["student_layers=[1, 2]"]).student_layers
    with pytest.raises(ConfigError, match="student_layers"):
        load_config(DistillClassifyConfig, overrides=["student_layers=odd"])


def test_an_interrupted_distillation_resumes_to_the_same_weights(decoder_teacher, tmp_path):
    config = distill_settings("7 steps")
    data, val = marker_task(40, 0), marker_task(16, 1)
    whole = distill_classifier(decoder_teacher, data, val, tmp_path / "whole", config)

    class Interrupt(Exception):
        pass

    factory = distill_classify_task_factory(decoder_teacher, data, val, config)

    def dying(ctx):
        task = factory(ctx)
        inner, calls = task.batches, {"n": 0}

        class Dying:
            def __next__(self):
                calls["n"] += 1
                if calls["n"] == 6:
                    raise Interrupt
                return next(inner)

            state_dict, load_state_dict = inner.state_dict, inner.load_state_dict

        task.batches = Dying()
        return task

    with pytest.raises(Interrupt):
        train(dying, config.train, tmp_path / "cut")
    resumed = distill_classifier(decoder_teacher, data, val, tmp_path / "cut", config, resume=True)
    a = load_model(whole.model_dir).model.state_dict()
    b = load_model(resumed.model_dir).model.state_dict()
    assert set(a) == set(b) and all(torch.equal(a[n], b[n]) for n in a)
    assert resumed.final["val_loss"] == whole.final["val_loss"]
    assert resumed.final["teacher_val_accuracy"] == whole.final["teacher_val_accuracy"]
