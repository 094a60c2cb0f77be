"""Training a classifier through the one training loop: a tiny model learns a separable task,
each mode trains exactly its parameters, an interrupted run resumes to the same weights, and the
trained model classifies the same with the padding on either side."""

from __future__ import annotations

import random
from dataclasses import replace

import numpy as np
import pytest
import torch

from pocketlm.checkpoint.adapted_model import load_adapted_model, merge_adapter, read_classifier
from pocketlm.checkpoint.adapters import load_adapter
from pocketlm.checkpoint.model_io import load_model
from pocketlm.common.env import DistEnv
from pocketlm.common.errors import ConfigError, InputError
from pocketlm.data.classify_loader import ClassifyBatches, LabelledTokens, make_batch
from pocketlm.engine.classify import open_classifier
from pocketlm.model.classifier import to_classifier
from pocketlm.model.lora import LoRAConfig
from pocketlm.train.config import OptimConfig, ScheduleConfig, TrainConfig
from pocketlm.train.loop import train
from pocketlm.train.metrics import read_metrics
from pocketlm.train.task import Role, RunContext
from pocketlm.train.tasks.classify import (
    ClassifyConfig,
    classify_loss,
    classify_task_factory,
    train_classifier,
)

MARK = 7  # label 1: the marker token appears somewhere in the text
LABELS = ("absent", "present")


def marker_task(n: int, seed: int) -> LabelledTokens:
    """Random texts of 2..14 tokens out of 50; half of them hold the marker at a random place."""
    rng = random.Random(seed)
    ids, labels = [], []
    for i in range(n):
        text = [rng.randrange(10, 60) for _ in range(rng.randint(2, 14))]
        if i % 2:
            text[rng.randrange(len(text))] = MARK
        ids.append(text)
        labels.append(i % 2)
    return LabelledTokens(ids, labels)


def settings(mode: str = "full", budget: str = "6 steps", **train) -> ClassifyConfig:
    values = dict(
        budget=budget, batch_size=16, ctx=32, log_every=1, checkpoint_every=3,
        keep_checkpoints=5, precision="fp32", device="cpu", compile="off", threads=1,
        optim=OptimConfig(kind="adamw", lr=1e-2, weight_decay=0.0),
        schedule=ScheduleConfig(kind="cosine", warmup_steps=2),
    )  # fmt: skip
    values.update(train)
    return ClassifyConfig(
        mode=mode, lora=LoRAConfig(rank=4, alpha=8.0), train=TrainConfig(**values)
    )


def context() -> RunContext:
    return RunContext(torch.device("cpu"), "fp32", DistEnv(), "none", 1, 0)


def test_a_tiny_model_learns_whether_a_token_appears(tiny_model_dir, tmp_path):
    run = train_classifier(
        tiny_model_dir, LABELS, marker_task(512, 0), marker_task(128, 1), tmp_path / "run",
        settings(budget="100 steps", eval_every=50),
    )  # fmt: skip
    assert run.final["val_accuracy"] >= 0.9
    rows = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "val_accuracy" in r]
    assert [r["step"] for r in rows] == [50, 100] and rows[-1]["val_accuracy"] == run.final[
        "val_accuracy"
    ]
    assert rows[-1]["val_loss"] < 0.5 and rows[-1]["val_examples"] == 128
    loaded = load_model(run.model_dir)
    assert loaded.config.labels == LABELS and not hasattr(loaded.model, "lm_head")
    # Right or left padding, or none: the same logits from the trained classifier.
    batch = make_batch(marker_task(4, 2), [0, 1, 2, 3], pad_id=0)
    right = torch.from_numpy(batch["input_ids"])
    mask = torch.from_numpy(batch["attention_mask"])
    lengths = mask.sum(dim=1)
    left = torch.stack([torch.roll(r, int(r.numel() - n)) for r, n in zip(right, lengths)])
    with torch.no_grad():
        from_right = loaded.model(right, attention_mask=mask)
        from_left = loaded.model(left, attention_mask=torch.flip(mask, dims=[1]))
        alone = torch.cat([loaded.model(r[:n][None]) for r, n in zip(right, lengths)])
    torch.testing.assert_close(from_right, alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(from_left, alone, atol=1e-5, rtol=0)


def _trainable(task) -> set[str]:
    """The parameters that get a gradient from the task's loss (after the loop's freezing)."""
    named = dict(task.model.named_parameters())
    for name, param in named.items():
        param.requires_grad_(name in task.roles)
        param.grad = None
    batch = make_batch(marker_task(8, 3), range(8), pad_id=0)
    loss, _ = task.loss(task.model, {k: torch.from_numpy(v) for k, v in batch.items()})
    loss.backward()
    return {n for n, p in named.items() if p.grad is not None}


@pytest.mark.parametrize("mode", ["full", "head", "lora"])
def test_each_mode_trains_exactly_its_parameters(tiny_model_dir, tmp_path, mode):
    config = settings(mode, budget="3 steps")
    data = marker_task(64, 0)
    factory = classify_task_factory(tiny_model_dir, LABELS, data, None, config)
    task = factory(context())
    body = {n for n, _ in task.model.named_parameters() if not n.startswith("score.")}
    lora = {n for n in body if ".lora_" in n}
    expected = {
        "full": body | {"score.weight"},
        "head": {"score.weight"},
        "lora": lora | {"score.weight"},
    }[mode]
    assert set(task.roles) == expected and _trainable(task) == expected
    assert task.roles["score.weight"] == Role.HEAD
    if mode == "lora":
        assert {task.roles[n] for n in lora} == {Role.ADAPTER} and len(lora) == 2 * 7 * 2
    if mode == "full":  # the body and the head's training FLOPs: no LM head is counted or removed
        mean_len = sum(len(t) for t in data.token_ids) / len(data.token_ids)
        flops = task.model.config.flops_per_token(round(mean_len), training=True)
        assert task.flops_per_token == pytest.approx(flops)

    run = train(factory, config.train, tmp_path / mode)
    start = to_classifier(load_model(tiny_model_dir).model, LABELS, seed=0).state_dict()
    if mode == "lora":  # the adapter holds its matrices and the head; the base is untouched
        tensors, _ = load_adapter(run.model_dir, base=tiny_model_dir)
        assert set(tensors) == lora | {"score.weight"}
        assert read_classifier(run.model_dir)["labels"] == list(LABELS)
        model = load_adapted_model(tiny_model_dir, run.model_dir).model
        assert model.config.labels == LABELS
        assert torch.equal(model.score.weight, tensors["score.weight"])
        served = open_classifier(
            tiny_model_dir, adapter=run.model_dir, device="cpu", precision="fp32"
        )
        with torch.no_grad():
            want = model(torch.tensor([[1, 20, 30]])).softmax(-1)[0].tolist()
        got = served.predict([[1, 20, 30]])[0].probabilities
        assert list(got.values()) == pytest.approx(want, abs=1e-6)
        merged = load_model(merge_adapter(tiny_model_dir, run.model_dir, tmp_path / "merged"))
        assert merged.config.labels == LABELS and not hasattr(merged.model, "lm_head")
        with torch.no_grad():
            folded = merged.model(torch.tensor([[1, 20, 30]])).softmax(-1)[0].tolist()
        assert folded == pytest.approx(want, abs=1e-5)
        return
    after = load_model(run.model_dir).model.state_dict()
    changed = {n for n in start if not torch.equal(start[n], after[n])}
    assert changed == expected


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_an_interrupted_run_resumes_to_the_same_weights(tiny_model_dir, tmp_path, mode):
    config = settings(mode, budget="7 steps")
    data, val = marker_task(40, 0), marker_task(16, 1)  # 40 examples: epochs end mid-batch
    whole = train_classifier(tiny_model_dir, LABELS, data, val, tmp_path / "whole", config)

    class Interrupt(Exception):
        pass

    factory = classify_task_factory(tiny_model_dir, LABELS, data, val, config)

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
    resumed = train_classifier(
        tiny_model_dir, LABELS, data, val, tmp_path / "cut", config, resume=True
    )
    if mode == "lora":  # the adapter's matrices and the head
        a, b = load_adapter(whole.model_dir)[0], load_adapter(resumed.model_dir)[0]
    else:
        a = load_model(whole.model_dir).model.state_dict()
        b = load_model(resumed.model_dir).model.state_dict()
    assert set(a) == set(b) and all(torch.equal(a[n], b[n]) for n in a)
    assert resumed.final["val_loss"] == whole.final["val_loss"]


def test_batches_cover_every_example_each_epoch_and_resume_exactly():
    data = marker_task(10, 0)
    batches = ClassifyBatches(data, 4, pad_id=0, seed=3)
    seen = [batches.indices_at(k, 10).tolist() for k in (0, 10)]
    assert sorted(seen[0]) == sorted(seen[1]) == list(range(10)) and seen[0] != seen[1]
    first = [next(batches) for _ in range(3)]
    assert first[0]["input_ids"].shape[1] == max(len(data.token_ids[i]) for i in seen[0][:4])
    state = batches.state_dict()
    later = next(batches)
    again = ClassifyBatches(data, 4, pad_id=0, seed=3)
    again.load_state_dict(state)
    assert all(np.array_equal(later[k], v) for k, v in next(again).items())
    with pytest.raises(InputError, match="seed"):
        ClassifyBatches(data, 4, pad_id=0, seed=4).load_state_dict(state)
    # two ranks of batch 2 deal out what one rank of batch 4 does
    ranks = [ClassifyBatches(data, 2, pad_id=0, seed=3, rank=r, world_size=2) for r in (0, 1)]
    assert (
        np.concatenate([next(r)["labels"] for r in ranks]).tolist() == first[0]["labels"].tolist()
    )


def test_the_pad_id_changes_nothing_and_class_weights_weigh_the_loss():
    model = to_classifier(load_model_for_loss(), LABELS, seed=0).eval()
    data = marker_task(6, 4)
    losses = []
    for pad in (0, 123, MARK):
        batch = {k: torch.from_numpy(v) for k, v in make_batch(data, range(6), pad).items()}
        losses.append(classify_loss(model, batch)[0])
    torch.testing.assert_close(losses[1], losses[0])
    torch.testing.assert_close(losses[2], losses[0])
    weights = torch.tensor([1.0, 3.0])
    total, count = classify_loss(model, batch, weights)
    logits = model(batch["input_ids"], attention_mask=batch["attention_mask"])
    expected = torch.nn.functional.cross_entropy(logits, batch["labels"], weight=weights)
    torch.testing.assert_close(total / count, expected)
    assert float(count) == 1.0 * 3 + 3.0 * 3


def load_model_for_loss():
    from pocketlm.model.config import ModelConfig
    from pocketlm.model.transformer import build_model

    config = ModelConfig(
        vocab_size=512, dim=32, n_layers=2, n_heads=2, n_kv_heads=1, max_seq_len=32
    )
    return build_model(config, seed=0)


def test_bad_settings_and_data_fail_before_training(tiny_model_dir, tmp_path):
    data = marker_task(8, 0)
    with pytest.raises(ConfigError, match="mode"):
        ClassifyConfig(mode="partial")
    with pytest.raises(ConfigError, match="class weights"):
        classify_task_factory(
            tiny_model_dir, LABELS, data, None, replace(settings(), class_weights=(1.0, 2.0, 3.0))
        )
    with pytest.raises(ConfigError, match="label names"):
        classify_task_factory(tiny_model_dir, None, data, None, settings())
    bad = LabelledTokens([[1, 2], []], [0, 1])
    with pytest.raises(InputError, match="example 1 has no tokens"):
        classify_task_factory(tiny_model_dir, LABELS, bad, None, settings())
    with pytest.raises(InputError, match="label id 2"):
        classify_task_factory(tiny_model_dir, LABELS, LabelledTokens([[1]], [2]), None, settings())


def test_texts_are_encoded_as_inference_encodes_them(synthetic_pipeline):
    from pocketlm.data.classify_loader import encode_labelled
    from pocketlm.tokenizer.tokenizer import Tokenizer

    tok = Tokenizer.load(synthetic_pipeline["tokenizer"])
    texts = ["a happy dog", "the <|end|> sad cat"]
    data = encode_labelled(tok, texts, ["pos", "neg"], ["neg", "pos"])
    assert data.labels == [1, 0]
    assert data.token_ids == [tok.encode(t, add_bos=True, parse_special=False) for t in texts]
    with pytest.raises(InputError, match="not among the classes"):
        encode_labelled(tok, texts, ["pos", "meh"], ["neg", "pos"])


def test_lora_under_bf16_keeps_the_trained_head_in_fp32(tiny_model_dir):
    config = settings("lora", precision="bf16")
    factory = classify_task_factory(tiny_model_dir, LABELS, marker_task(16, 0), None, config)
    task = factory(RunContext(torch.device("cpu"), "bf16", DistEnv(), "none", 1, 0))
    assert task.model.score.weight.dtype == torch.float32  # trained: not cast with the base
    assert task.model.model.layers[0].mlp.up_proj.base_layer.weight.dtype == torch.bfloat16
    assert "score.weight" in task.roles
