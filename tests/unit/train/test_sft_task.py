"""Chat fine-tuning through the one loop: the loss counts only assistant targets, packed rows
give the same held-out loss as one example per row, a run learns its data and writes a model
that keeps the base's chat format, and the batches resume exactly."""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from pocketlm.checkpoint.model_io import load_model, save_model
from pocketlm.common.env import DistEnv
from pocketlm.common.errors import ConfigError, InputError
from pocketlm.common.manifest import read_manifest
from pocketlm.data.packing import pack_examples
from pocketlm.data.sft_examples import SFTDataConfig, load_sft_data
from pocketlm.data.sft_loader import PackedBatches, eval_batches
from pocketlm.data.sft_tokens import SFTTokens, target_count
from pocketlm.model.config import ModelConfig
from pocketlm.model.transformer import build_model
from pocketlm.train.config import OptimConfig, ScheduleConfig, TrainConfig
from pocketlm.train.task import RunContext, arrays_to_device
from pocketlm.train.tasks.sft import (
    SFTConfig,
    held_out_loss,
    masked_loss,
    sft,
    sft_task_factory,
)
from tests.conftest import make_sentence

CPU = RunContext(torch.device("cpu"), "fp32", DistEnv(), "none", 1, 0)


def _records(n: int, seed: int = 0) -> list[dict]:
    """Requests answered by repeating them: learnable by a tiny model, in every format."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        text = make_sentence(rng, rng.randint(3, 8))
        if i % 3 == 0:
            out.append(
                {
                    "messages": [
                        {"role": "user", "content": text},
                        {"role": "assistant", "content": text},
                    ]
                }
            )
        elif i % 3 == 1:
            out.append({"instruction": "Repeat.", "input": text, "output": text})
        else:
            out.append(
                {
                    "conversations": [
                        {"from": "human", "value": text},
                        {"from": "gpt", "value": text},
                    ]
                }
            )
    return out


@pytest.fixture(scope="module")
def base_dir(synthetic_pipeline, tmp_path_factory) -> Path:
    """A tiny random model of 128 positions with PocketLM's tokenizer and chat template."""
    config = ModelConfig(
        vocab_size=512, dim=32, n_layers=2, n_heads=2, n_kv_heads=1, max_seq_len=128
    )
    out = tmp_path_factory.mktemp("sft-base") / "model"
    return save_model(out, build_model(config, seed=0), synthetic_pipeline["tokenizer"])


@pytest.fixture
def chat_file(tmp_path: Path) -> Path:
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _records(48)), encoding="utf-8")
    return path


def _settings(budget: str = "4 steps", **data) -> SFTConfig:
    train = TrainConfig(
        optim=OptimConfig(kind="adamw", lr=3e-3, weight_decay=0.0),
        schedule=ScheduleConfig(kind="constant", warmup_steps=1),
        budget=budget,
        batch_size=4,
        ctx=64,
        eval_every=10,
        eval_tokens=4096,
        checkpoint_every=10,
        log_every=5,
        precision="fp32",
        device="cpu",
        compile="off",
    )
    return SFTConfig(data=SFTDataConfig(**{"val_fraction": 0.2, **data}), train=train)


def test_the_loss_counts_only_assistant_targets_and_packing_changes_nothing(base_dir, chat_file):
    settings = _settings()
    task = sft_task_factory(base_dir, [str(chat_file)], settings)(CPU)
    assert task.name == "sft" and task.evaluate is not None
    report = task.describe["data"]
    assert report["records"]["in"] == 48 and report["formats"] == {
        "chat": 16,
        "alpaca": 16,
        "sharegpt": 16,
    }
    assert report["examples"]["train"] + report["examples"]["val"] == 48
    assert (
        report["rows"]["train"] < report["examples"]["train"] and report["rows"]["train_fill"] > 0.8
    )
    batch = arrays_to_device(next(task.batches), CPU.device)
    assert set(batch) == {"input_ids", "targets", "doc_ids", "positions"}
    loss, count = masked_loss(task.model, batch)
    assert count == (batch["targets"] != -100).sum() and 0 < count < batch["targets"].numel()
    assert loss.item() / count.item() == pytest.approx(5.0, abs=1.5)  # ~log(vocab) untrained
    # the same examples packed and one per row: the same held-out loss
    tok = load_model(base_dir).tokenizer
    data = load_sft_data([str(chat_file)], tok, settings.data, 65)
    packed = pack_examples(data.val, 64, tok.pad_id)
    alone = pack_examples(data.val, 64, tok.pad_id, packing=False)
    assert len(packed) < len(alone)
    with torch.no_grad():
        a = held_out_loss(task.model, eval_batches(packed, 4), CPU.device)
        b = held_out_loss(task.model, eval_batches(alone, 4, packed=False), CPU.device)
    assert a[1] == b[1] == sum(target_count(t) for t in data.val)
    assert a[0] / a[1] == pytest.approx(b[0] / b[1], abs=1e-5)


def test_a_run_learns_its_data_and_keeps_the_chat_format(base_dir, chat_file, tmp_path):
    settings = _settings("30 steps")
    before = sft_task_factory(base_dir, [str(chat_file)], settings, val_files=[str(chat_file)])(CPU)
    start = before.evaluate(before.model, CPU)["val_loss"]
    result = sft(base_dir, [str(chat_file)], tmp_path / "run", settings, val_files=[str(chat_file)])
    assert result.final["val_loss"] < start - 0.3, (start, result.final)
    loaded = load_model(result.model_dir)
    assert loaded.tokenizer.has_chat_template
    manifest = read_manifest(result.model_dir)
    assert manifest["config"]["task"] == "sft"
    assert manifest["summary"]["sft_data"]["examples"] == {"train": 48, "val": 48}
    eot = {k: manifest["summary"][k] for k in result.final if k.startswith("end_of_turn_")}
    assert eot == {k: result.final[k] for k in eot} and eot["end_of_turn_prompts"] == 32
    assert 0.0 <= eot["end_of_turn_rate"] <= 1.0
    assert any(
        p.get("kind") == "file" and p["path"].endswith("chat.jsonl") for p in manifest["parents"]
    )


def test_packed_batches_deal_rows_by_a_global_counter():
    rng = np.random.default_rng(0)
    examples = [
        SFTTokens(rng.integers(3, 99, int(n)).tolist(), [True] * int(n))
        for n in rng.integers(4, 30, 40)
    ]
    rows = pack_examples(examples, 32, 0)
    one = PackedBatches(rows, 4, seed=3)
    ranks = [PackedBatches(rows, 2, seed=3, rank=r, world_size=2) for r in range(2)]
    for _ in range(len(rows)):  # several epochs: every rank's rows are the single process's rows
        whole = next(one)["input_ids"]
        parts = np.concatenate([next(r)["input_ids"] for r in ranks])
        np.testing.assert_array_equal(whole, parts)
    state = json.loads(json.dumps(one.state_dict()))
    resumed = PackedBatches(rows, 4, seed=3)
    resumed.load_state_dict(state)
    expected, got = next(one), next(resumed)
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key])
    with pytest.raises(InputError, match="num_rows was"):
        PackedBatches(pack_examples(examples[:10], 32, 0), 4, seed=3).load_state_dict(state)
    assert set(next(PackedBatches(rows, 2, packed=False))) == {"input_ids", "targets"}


def test_settings_are_checked_early(base_dir, chat_file):
    with pytest.raises(ConfigError, match="exceeds the model's context"):
        sft_task_factory(
            base_dir,
            [str(chat_file)],
            replace(_settings(), train=replace(_settings().train, ctx=256)),
        )
    with pytest.raises(InputError, match="no such file"):
        sft_task_factory(base_dir, ["missing.jsonl"], _settings())


def test_an_imported_chatml_model_fine_tunes_in_its_own_template(tmp_path):
    """A tiny Qwen2 with its ChatML template: SFT packs its turns with the template's masks and
    the fine-tuned model keeps chat_template.jinja and generation_config.json."""
    pytest.importorskip("transformers")
    from pocketlm.interop.hf_import import import_hf
    from tests.unit.interop.hf_families import build_hf_model
    from tests.unit.tokenizer.hf_folders import write_folder

    folder = tmp_path / "qwen"
    build_hf_model("qwen2").save_pretrained(folder)
    tokenizer = write_folder("qwen2_5", tmp_path / "tok", "jinja")
    for f in tokenizer.iterdir():
        shutil.copyfile(f, folder / f.name)
    model_dir = import_hf(folder, tmp_path / "imported")
    words = ["cat", "dog", "sun", "hi", "fox"]
    records = [  # short: the toy tokenizer spends many tokens on a word, and the model has 64
        {"system": "Be brief.", "prompt": a, "completion": b} for a in words for b in words
    ]
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    settings = _settings("3 steps", val_fraction=0.25)
    result = sft(model_dir, [str(data)], tmp_path / "run", settings)
    report = read_manifest(result.model_dir)["summary"]["sft_data"]
    assert report["records"]["kept"] == 25 and report["prompt_mismatched_turns"] == 0
    assert {"chat_template.jinja", "generation_config.json"} <= {
        p.name for p in result.model_dir.iterdir()
    }
    tok = load_model(result.model_dir).tokenizer
    assert tok.render_chat([{"role": "user", "content": "hi"}]).endswith("<|im_start|>assistant\n")
    assert tok.backend.token_to_id("<|im_end|>") in tok.stop_ids
    assert result.final["val_loss"] > 0
