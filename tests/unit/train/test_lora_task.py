"""Fine-tuning an existing model through the one training loop: full, LoRA (any task's model
wrapped by with_lora) and QLoRA. A LoRA run trains only the adapter, checkpoints only the adapter
and the base's hash, lowers the loss, and resumes exactly; its artifact opens on the base."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from pocketlm.checkpoint.adapted_model import read_lora_config
from pocketlm.checkpoint.adapters import ADAPTER_FILE, load_adapter
from pocketlm.checkpoint.model_io import load_model
from pocketlm.checkpoint.run_checkpoints import list_checkpoints
from pocketlm.checkpoint.train_state import load_train_state
from pocketlm.common.errors import ConfigError
from pocketlm.common.manifest import parent_ref, read_manifest
from pocketlm.compress.quantize import quantize_model_dir
from pocketlm.evals.evaluate import evaluate_model
from pocketlm.model.lora import LoRAConfig
from pocketlm.train.config import OptimConfig, ScheduleConfig, TrainConfig
from pocketlm.train.loop import train
from pocketlm.train.metrics import read_metrics
from pocketlm.train.task import Role
from pocketlm.train.tasks.finetune import FinetuneConfig, finetune, finetune_factory


def _config(lora: LoRAConfig, budget: str = "8 steps", **train) -> FinetuneConfig:
    settings = dict(
        budget=budget,
        batch_size=4,
        ctx=32,
        log_every=1,
        eval_tokens=512,
        checkpoint_every=4,
        keep_checkpoints=5,
        precision="fp32",
        device="cpu",
        compile="off",
        threads=1,
        optim=OptimConfig(kind="adamw", lr=1e-2, weight_decay=0.0),
        schedule=ScheduleConfig(kind="cosine", warmup_steps=2),
    )
    settings.update(train)
    return FinetuneConfig(lora=lora, train=TrainConfig(**settings))


def _base_val_loss(model_dir, tokens) -> float:
    return evaluate_model(model_dir, tokens, max_tokens=512, ctx=32, batch_size=4, device="cpu")[
        "loss"
    ]


def _losses(run_dir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir / "metrics.jsonl")}


class _Interrupt(Exception):
    pass


def _interrupting(factory, at_call: int):
    """The factory's task, dying when its batch source is asked for batch number `at_call`."""
    calls = {"n": 0}

    def wrapped(ctx):
        task = factory(ctx)
        inner = task.batches

        class Interrupting:
            def __next__(self):
                calls["n"] += 1
                if calls["n"] == at_call:
                    raise _Interrupt
                return next(inner)

            def state_dict(self):
                return inner.state_dict()

            def load_state_dict(self, state):
                inner.load_state_dict(state)

        task.batches = Interrupting()
        return task

    return wrapped


def test_a_lora_run_trains_only_the_adapter_lowers_the_loss_and_resumes_exactly(
    tiny_model_dir, synthetic_pipeline, tmp_path
):
    tokens = synthetic_pipeline["tokens"]
    config = _config(LoRAConfig(rank=8, alpha=16.0, dropout=0.1, targets="all-linear,lm_head"))
    full = finetune(tiny_model_dir, tokens, tmp_path / "full", config)
    assert full.final["val_loss"] < _base_val_loss(tiny_model_dir, tokens) - 0.05

    # The artifact: the adapter tensors only, the base's hash, the LoRA settings.
    tensors, ref = load_adapter(full.model_dir, base=tiny_model_dir)
    assert ref["sha256"] == parent_ref(tiny_model_dir)["sha256"]
    assert all(".lora_A." in k or ".lora_B." in k for k in tensors)
    assert len(tensors) == 2 * (2 * 7 + 1)
    lora, targets = read_lora_config(full.model_dir)
    assert lora.rank == 8 and targets[-1] == "lm_head"
    ckpt = tmp_path / "full" / "checkpoints" / "step-0000004"
    assert set(read_manifest(ckpt, kind="adapter")["files"]) >= {ADAPTER_FILE, "train_state.json"}
    _, optimizers, _ = load_train_state(ckpt)
    names = {n for o in optimizers for g in o["param_groups"] for n in g["params"]}
    assert names == set(tensors)  # the frozen base has no optimizer state

    # Killed inside step 7 (last checkpoint: step 4), resumed: the same run, step for step.
    factory = finetune_factory(tiny_model_dir, tokens, config)
    with pytest.raises(_Interrupt):
        train(_interrupting(factory, 7), config.train, tmp_path / "cut")
    assert [s for s, _ in list_checkpoints(tmp_path / "cut" / "checkpoints")] == [4]
    resumed = finetune(tiny_model_dir, tokens, tmp_path / "cut", config, resume=True)
    assert _losses(tmp_path / "cut") == _losses(tmp_path / "full")
    again, _ = load_adapter(resumed.model_dir)
    assert all(torch.equal(again[k], tensors[k]) for k in tensors)

    # generate/chat/eval/serve open base + adapter: the same validation loss the run reported.
    evaluated = evaluate_model(
        tiny_model_dir,
        tokens,
        max_tokens=512,
        ctx=32,
        batch_size=4,
        device="cpu",
        adapter=tmp_path / "full",
    )
    assert evaluated["loss"] == pytest.approx(full.final["val_loss"], rel=1e-6)


def test_qlora_trains_over_an_int4_base(tiny_model_dir, synthetic_pipeline, tmp_path):
    tokens = synthetic_pipeline["tokens"]
    q4 = quantize_model_dir(tiny_model_dir, tmp_path / "q4", "int4")[0]
    run = finetune(q4, tokens, tmp_path / "qlora", _config(LoRAConfig(rank=8, alpha=16.0)))
    assert run.final["val_loss"] < _base_val_loss(q4, tokens) - 0.05
    assert load_adapter(run.model_dir, base=q4)[1]["path"] == str(q4.resolve())
    # QLoRA over the float base, quantized in memory: the adapter records it and loads the same way
    onthefly = _config(LoRAConfig(rank=4, alpha=8.0, base_quant="int8"), budget="2 steps")
    run = finetune(tiny_model_dir, tokens, tmp_path / "qlora8", onthefly)
    assert read_lora_config(run.model_dir)[0].base_quant == "int8"
    evaluated = evaluate_model(
        tiny_model_dir, tokens, max_tokens=512, ctx=32, batch_size=4, device="cpu",
        adapter=run.model_dir,
    )  # fmt: skip
    assert evaluated["loss"] == pytest.approx(run.final["val_loss"], rel=1e-6)


def test_a_full_fine_tune_continues_the_model(tiny_model_dir, synthetic_pipeline, tmp_path):
    tokens = synthetic_pipeline["tokens"]
    run = finetune(tiny_model_dir, tokens, tmp_path / "ft", _config(LoRAConfig(), budget="6 steps"))
    assert run.final["val_loss"] < _base_val_loss(tiny_model_dir, tokens) - 0.05
    manifest = read_manifest(run.model_dir, kind="model")
    assert str(tiny_model_dir.resolve()) in {p["path"] for p in manifest["parents"]}
    assert load_model(run.model_dir).config == load_model(tiny_model_dir).config
    q8 = quantize_model_dir(tiny_model_dir, tmp_path / "q8", "int8")[0]
    with pytest.raises(ConfigError, match="train a LoRA adapter over it"):
        finetune(q8, tokens, tmp_path / "bad", _config(LoRAConfig()))
    with pytest.raises(ConfigError, match="train a LoRA adapter over it"):
        finetune(tiny_model_dir, tokens, tmp_path / "bad", _config(LoRAConfig(base_quant="int4")))


def test_any_task_can_be_wrapped_and_a_bad_target_fails_before_training(
    tiny_model_dir, synthetic_pipeline, tmp_path
):
    config = _config(LoRAConfig(rank=2, targets="qkv"))
    with pytest.raises(ConfigError, match="names no linear layer"):
        finetune(tiny_model_dir, synthetic_pipeline["tokens"], tmp_path / "x", config)
    with pytest.raises(ValueError, match="lora.dropout"):
        replace(config.lora, dropout=1.5)


def test_lora_wraps_the_chat_fine_tuning_task(synthetic_pipeline, tmp_path):
    """with_lora takes any task factory: here chat fine-tuning (train/tasks/sft.py), its base
    kept as stored, its loss and held-out evaluation unchanged, its saves become the adapter's."""
    import json
    import random

    from pocketlm.checkpoint.adapted_model import load_adapted_model
    from pocketlm.checkpoint.model_io import save_model
    from pocketlm.common.env import DistEnv
    from pocketlm.data.sft_examples import SFTDataConfig
    from pocketlm.model.config import ModelConfig
    from pocketlm.model.transformer import build_model
    from pocketlm.train.task import RunContext
    from pocketlm.train.tasks.lora import with_lora
    from pocketlm.train.tasks.sft import SFTConfig, sft_task_factory
    from tests.conftest import make_sentence

    config = ModelConfig(
        vocab_size=512, dim=32, n_layers=2, n_heads=2, n_kv_heads=1, max_seq_len=128
    )
    base = save_model(tmp_path / "base", build_model(config), synthetic_pipeline["tokenizer"])
    rng = random.Random(0)
    texts = [make_sentence(rng, rng.randint(3, 8)) for _ in range(32)]
    chat = tmp_path / "chat.jsonl"
    chat.write_text(
        "".join(
            json.dumps(
                {"messages": [{"role": "user", "content": t}, {"role": "assistant", "content": t}]}
            )
            + "\n"
            for t in texts
        ),
        encoding="utf-8",
    )
    train_config = _config(LoRAConfig(), budget="12 steps", ctx=64, eval_tokens=4096).train
    settings = SFTConfig(data=SFTDataConfig(val_fraction=0.2), train=train_config)
    lora = LoRAConfig(rank=8, alpha=16.0)
    factory = with_lora(
        sft_task_factory(base, [str(chat)], settings, weights_dtype=None), lora, base
    )
    cpu = RunContext(torch.device("cpu"), "fp32", DistEnv(), "none", 1, 0)
    fresh = factory(cpu)
    assert fresh.name == "sft+lora" and set(fresh.roles.values()) == {Role.ADAPTER}
    start = fresh.evaluate(fresh.model, cpu)["val_loss"]
    result = train(factory, train_config, tmp_path / "run")
    assert result.final["val_loss"] < start - 0.1, (start, result.final)
    assert read_manifest(result.model_dir, kind="adapter")["config"]["task"] == "sft"
    assert load_adapted_model(base, result.model_dir).tokenizer.has_chat_template


def test_continued_pretraining_with_replay_reports_both_validation_curves(
    tiny_model_dir, synthetic_pipeline, tmp_path
):
    """--replay: a share of the batches from the original data; every evaluation reports the
    domain's and the original data's validation loss, and the plot draws both."""
    from pocketlm.train.metrics import read_metrics

    tokens = synthetic_pipeline["tokens"]
    config = _config(LoRAConfig(rank=4, alpha=8.0), budget="6 steps", eval_every=3)
    run = finetune(tiny_model_dir, tokens, tmp_path / "replay", config, replay_dir=tokens)
    evals = [r for r in read_metrics(tmp_path / "replay" / "metrics.jsonl") if "val_loss" in r]
    assert evals and all(r["replay_val_loss"] > 0 and r["replay_val_bpb"] > 0 for r in evals)
    assert "replay_val_bpb" in run.final and (tmp_path / "replay" / "loss.png").is_file()
    with pytest.raises(ConfigError, match="--replay"):
        finetune_factory(tiny_model_dir, None, config, data_files=["x.jsonl"], replay_dir=tokens)
