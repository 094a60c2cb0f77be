"""Models for the language-model distillation tests, built from the session's tiny teacher:
a smaller student with its tokenizer, a teacher padded with extra vocabulary rows, a model with
another tokenizer; and the tests' loop settings."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import torch

from pocketlm.checkpoint.model_io import load_model, save_model
from pocketlm.model.transformer import build_model
from pocketlm.train.config import OptimConfig, ScheduleConfig, TrainConfig
from pocketlm.train.tasks.distill_lm import DistillConfig

PAD_ROWS = 64


def train_settings(budget: str = "4 steps", **overrides) -> TrainConfig:
    """fp32 on the CPU, batch 4 of 16 tokens, AdamW at 3e-3, constant schedule."""
    values = dict(
        budget=budget, batch_size=4, ctx=16, log_every=1, eval_tokens=256, precision="fp32",
        device="cpu", threads=1, optim=OptimConfig(kind="adamw", lr=3e-3, weight_decay=0.0),
        schedule=ScheduleConfig(kind="constant", warmup_steps=0), checkpoint_every=1000,
    )  # fmt: skip
    values.update(overrides)
    return TrainConfig(**values)


def distill_settings(
    budget: str = "4 steps", train: dict | None = None, **options
) -> DistillConfig:
    """DistillConfig with the tests' loop settings."""
    return DistillConfig(train=train_settings(budget, **(train or {})), **options)


def student_dir(teacher_dir: Path, out: Path, seed: int = 5) -> Path:
    """A fresh 1-layer, 16-wide student with the teacher's tokenizer and vocabulary."""
    config = dataclasses.replace(
        load_model(teacher_dir).config, dim=16, n_layers=1, n_heads=2, n_kv_heads=1, ffn_dim=32
    )
    return save_model(out, build_model(config, seed=seed), teacher_dir)


def padded_teacher_dir(teacher_dir: Path, out: Path) -> Path:
    """The teacher with PAD_ROWS extra vocabulary rows (an untied head) whose logits are large:
    untrimmed, they would hold most of its probability."""
    teacher = load_model(teacher_dir)
    vocab = teacher.config.vocab_size
    config = dataclasses.replace(teacher.config, vocab_size=vocab + PAD_ROWS, tie_embeddings=False)
    padded = build_model(config, seed=1)
    state = teacher.model.state_dict()
    with torch.no_grad():
        for name, tensor in padded.state_dict().items():
            source = state[name if name in state else "model.embed_tokens.weight"]
            if tensor.shape[0] == vocab + PAD_ROWS:  # embedding and head: the rows, then padding
                tensor[:vocab] = source
                tensor[vocab:] = source[:PAD_ROWS] * 20.0
            else:
                tensor.copy_(source)
    return save_model(out, padded, teacher_dir)


def other_tokenizer_model(synthetic_pipeline: dict, teacher_dir: Path, out: Path) -> Path:
    """A tiny model with a tokenizer of its own (another vocabulary)."""
    from pocketlm.tokenizer.train import TokenizerConfig, train_tokenizer

    tok_dir = train_tokenizer(
        synthetic_pipeline["corpus"],
        out.parent / "other-tokenizer",
        TokenizerConfig(vocab_size=300),
    )
    config = dataclasses.replace(load_model(teacher_dir).config, vocab_size=300)
    return save_model(out, build_model(config, seed=2), tok_dir)


def chat_file(path: Path, n: int = 40, seed: int = 0) -> Path:
    """Chat records: a user question and an assistant reply of the conftest words."""
    import json

    from tests.conftest import make_sentence

    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        messages = [
            {"role": "user", "content": make_sentence(rng, 4)},
            {"role": "assistant", "content": make_sentence(rng, 5)},
        ]
        lines.append(json.dumps({"messages": messages}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def chat_teacher_dir(tokenizer_dir: Path, out: Path) -> Path:
    """A tiny random model of 128 positions with PocketLM's tokenizer and chat template."""
    from pocketlm.model.config import ModelConfig

    config = ModelConfig(
        vocab_size=512, dim=32, n_layers=2, n_heads=2, n_kv_heads=1, max_seq_len=128
    )
    return save_model(out, build_model(config, seed=0), tokenizer_dir)


def sharp_teacher_dir(teacher_dir: Path, out: Path, factor: float = 15.0) -> Path:
    """The teacher with its logits scaled by `factor` (the final norm's weight): a peaked
    distribution whose top few tokens hold most of the mass, as a trained model's do."""
    teacher = load_model(teacher_dir)
    with torch.no_grad():
        teacher.model.model.norm.weight.mul_(factor)
    return save_model(out, teacher.model, teacher_dir)
