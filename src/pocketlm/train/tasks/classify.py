"""Sequence classification (sentiment, routing, tagging) through the one training loop.

`classify_task_factory(model_dir, labels, train, val, settings)` takes examples already
tokenized (data/classify_loader.LabelledTokens: token ids and label ids), turns the model into
a classifier over `labels` when it is a language model (model/classifier.to_classifier: the same
body, a fresh score layer seeded by the run's seed; a classifier with these labels trains as it
is) and returns the TaskFactory the loop calls. An HF folder is imported first (interop).

Modes (settings.mode): "full" trains every weight; "head" freezes the body and trains only the
head (pooler, score); "lora" trains a LoRA adapter and the head (train/tasks/lora.with_lora
keeping the head: the adapter artifact holds both, and the labels).

The task: micro-batches padded on the right to their longest example (any pad id: the attention
mask decides, so a tokenizer without a pad token works), reshuffled each epoch, resumable;
loss = the examples' cross-entropy, optionally class-weighted (sum of w[y] * CE over the sum of
w[y]: the loop divides once, so this is the weighted mean over the whole step); evaluation =
validation loss and accuracy (val_loss, val_accuracy in the run's metrics); checkpoints and the
final model are model artifacts whose model_config.json carries the labels.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pocketlm.checkpoint.model_check import check_model_dir
from pocketlm.checkpoint.model_io import load_model, read_weights, save_model_state
from pocketlm.checkpoint.weights_spec import read_quantization
from pocketlm.common.config import to_dict
from pocketlm.common.errors import ArtifactError, ConfigError, InputError
from pocketlm.common.manifest import parent_ref
from pocketlm.data.classify_loader import (
    Batch,
    ClassifyBatches,
    LabelledTokens,
    eval_batches,
)
from pocketlm.interop.open_model import model_dir as resolve_model
from pocketlm.model.classifier import head_parameter_modules, to_classifier
from pocketlm.model.config import ModelConfig
from pocketlm.model.lora import LoRAConfig
from pocketlm.train.config import OptimConfig, ScheduleConfig, TrainConfig
from pocketlm.train.loop import RunResult, train
from pocketlm.train.roles import roles_by_structure
from pocketlm.train.task import (
    RunContext,
    SaveRequest,
    TaskFactory,
    TrainTask,
    arrays_to_device,
)
from pocketlm.train.tasks.lora import with_lora

MODES = ("full", "lora", "head")
HEAD_MODULES = ("pooler", "score")


def classify_train_defaults() -> TrainConfig:
    """Classifier defaults: AdamW at 1e-4 without weight decay, a short warm-up, cosine decay,
    eager (batches are padded to their longest text, so their shapes vary: torch.compile
    recompiled for new lengths at ~35 s each on 2 cores, and a 10-minute run made 2 steps)."""
    return TrainConfig(
        optim=OptimConfig(kind="adamw", lr=1e-4, weight_decay=0.0),
        schedule=ScheduleConfig(kind="cosine", warmup_fraction=0.06),
        compile="off",
    )


@dataclass(frozen=True)
class ClassifyConfig:
    """Classifier training settings: the mode, LoRA's shape (mode "lora"), the loop's settings
    (train.ctx: examples are cut to their first ctx tokens), optional class weights (one per
    label, for imbalanced data), the new head's init std (0: the model's init_std) and how many
    validation examples each evaluation reads (0: all)."""

    mode: str = "full"
    lora: LoRAConfig = field(default_factory=lambda: LoRAConfig(rank=8))
    train: TrainConfig = field(default_factory=classify_train_defaults)
    class_weights: tuple[float, ...] = ()
    head_std: float = 0.0
    eval_examples: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"classify mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if any(not (math.isfinite(w) and w > 0) for w in self.class_weights):
            raise ConfigError(f"class weights must be finite and > 0, got {self.class_weights}")
        if self.head_std < 0 or self.eval_examples < 0:
            raise ConfigError("head_std and eval_examples must be >= 0")


def classify_task_factory(
    model_dir: str | Path,
    labels: Sequence[str] | None,
    train_data: LabelledTokens,
    val_data: LabelledTokens | None,
    settings: ClassifyConfig,
    *,
    pad_id: int | None = None,
    parents: Sequence[dict] = (),
    data_report: dict[str, Any] | None = None,
    command: Sequence[str] | None = None,
) -> TaskFactory:
    """The task factory training `model_dir` (a language model, or a classifier over `labels`;
    labels None: the classifier's own) on labelled token sequences, validated on `val_data`.

    pad_id: the id padding fills in (default: the tokenizer's pad, else eos, else 0; the mask
    decides). parents / data_report: the data files' manifest references and the data module's
    report, carried into the artifacts' manifests.
    """
    base = resolve_model(model_dir)
    checked = check_model_dir(base)
    labels = _labels(checked.config, labels, base)
    tc = settings.train
    if tc.ctx > checked.config.max_seq_len:
        raise ConfigError(f"ctx {tc.ctx} exceeds the model's context {checked.config.max_seq_len}")
    if settings.class_weights and len(settings.class_weights) != len(labels):
        raise ConfigError(
            f"{len(settings.class_weights)} class weights for {len(labels)} labels {list(labels)}"
        )
    quantized = read_quantization(base)["scheme"] != "none"
    if quantized and settings.mode == "full":
        raise ConfigError(
            f"{base} is quantized: its integer weights cannot be fine-tuned; train a LoRA adapter "
            "(mode lora) or the head alone (mode head), or start from the float model"
        )
    tokenizer = checked.tokenizer
    pad = next((i for i in (pad_id, tokenizer.pad_id, tokenizer.eos_id) if i is not None), 0)
    train_data, val_data, report = prepare_examples(
        train_data, val_data, labels, tc.ctx, settings.eval_examples, pad
    )
    report = {**(data_report or {}), **report}
    mean_len = report["mean_tokens"]
    all_parents = [parent_ref(base), *parents]
    weights = torch.tensor(settings.class_weights) if settings.class_weights else None

    def inner(ctx: RunContext) -> TrainTask:
        # a frozen base under LoRA keeps the dtype it is stored in (as finetune does)
        dtype = None if settings.mode == "lora" else torch.float32
        model = load_model(base, dtype=dtype).model.train()
        if not model.config.labels:
            std = settings.head_std or None
            to_classifier(model, labels, seed=ctx.seed, std=std)
        config = model.config
        head = head_parameter_modules(model)
        frozen = [model.model] if settings.mode == "head" else []
        batches = ClassifyBatches(
            train_data, tc.batch_size, pad_id=pad, seed=tc.seed,
            rank=ctx.dist.rank, world_size=ctx.dist.world_size,
        )  # fmt: skip
        held_out = eval_batches(val_data, tc.batch_size, pad) if val_data else []
        on_device = weights.to(ctx.device) if weights is not None else None

        def loss(m: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Any]:
            return classify_loss(m, batch, on_device)

        def evaluate(m: nn.Module, run_ctx: RunContext) -> dict[str, float]:
            return held_out_metrics(m, held_out, run_ctx.device, run_ctx.autocast())

        def save(request: SaveRequest) -> Path:
            return save_model_state(
                request.out, request.state, config, base, parents=all_parents,
                config={"task": "classify", **to_dict(settings)},
                summary={**request.summary, "labels": list(labels), "classify_data": report},
                command=command, overwrite=request.overwrite, extra=request.add_files,
            )  # fmt: skip

        def load(checkpoint: Path) -> dict[str, torch.Tensor]:
            return checkpoint_tensors(checkpoint, model)

        # Training FLOPs of the body and the head (a classifier's config counts no LM head over
        # the vocabulary); a frozen body runs forward only.
        flops = config.flops_per_token(max(1, round(mean_len)), training=True)
        return TrainTask(
            name="classify",
            model=model,
            batches=batches,
            loss=loss,
            to_device=arrays_to_device,
            tokens_per_batch=max(1, round(tc.batch_size * mean_len)),
            roles=roles_by_structure(model, heads=head, frozen=frozen),
            save=save,
            load=load,
            evaluate=evaluate if held_out else None,
            flops_per_token=flops / 3 if settings.mode == "head" else flops,
            describe={
                "model": config.to_dict(),
                "base": str(base),
                "mode": settings.mode,
                "labels": list(labels),
                "data": report,
            },
        )

    if settings.mode == "lora":
        keep = [name for name in HEAD_MODULES if _has_head_module(checked.config, name)]
        return with_lora(inner, settings.lora, base, command=command, keep=keep)
    return inner


def prepare_examples(
    train_data: LabelledTokens,
    val_data: LabelledTokens | None,
    labels: Sequence[str],
    ctx: int,
    eval_examples: int,
    pad_id: int,
) -> tuple[LabelledTokens, LabelledTokens | None, dict[str, Any]]:
    """(training examples, validation examples or None, their report): both checked against
    the labels and cut to their first `ctx` tokens, the validation set to its first
    `eval_examples` (0: all); InputError naming the first bad example."""
    train_data.check(len(labels), "training")
    train_data, cut_train = train_data.truncated(ctx)
    if val_data is not None and len(val_data):
        val_data.check(len(labels), "validation")
        val_data, cut_val = val_data.truncated(ctx)
        if eval_examples:
            n = min(eval_examples, len(val_data))
            val_data = LabelledTokens(val_data.token_ids[:n], val_data.labels[:n])
    else:
        val_data, cut_val = None, 0
    mean_len = sum(len(t) for t in train_data.token_ids) / max(1, len(train_data))
    report = {
        "labels": list(labels),
        "examples": {"train": len(train_data), "val": len(val_data) if val_data else 0},
        "truncated": {"ctx": ctx, "train": cut_train, "val": cut_val},
        "mean_tokens": round(mean_len, 2),
        "pad_id": pad_id,
    }
    return train_data, val_data, report


def checkpoint_tensors(checkpoint: Path, model: nn.Module) -> dict[str, torch.Tensor]:
    """A checkpoint's tensors to restore into `model`; ArtifactError unless their names are
    exactly the model's."""
    tensors = read_weights(checkpoint)
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or unexpected:
        raise ArtifactError(
            f"{checkpoint}: weights do not match this classifier "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return tensors


def _labels(config: ModelConfig, labels: Sequence[str] | None, base: Path) -> tuple[str, ...]:
    """The labels to train: the given ones (a classifier must already have them), else the
    classifier's own; ConfigError for a language model without labels."""
    if labels is None:
        if not config.labels:
            raise ConfigError(f"{base} is a language model: give the label names to classify")
        return config.labels
    labels = tuple(labels)
    if config.labels and config.labels != labels:
        raise ConfigError(
            f"{base} is a classifier over {list(config.labels)}, not {list(labels)}: train it "
            "with its own labels, or start from a language model"
        )
    return labels


def _has_head_module(config: ModelConfig, name: str) -> bool:
    """Whether the classifier made from `config` has head module `name` (a decoder: score)."""
    return name == "score" or (bool(config.labels) and config.pooler != "none")


def classify_loss(
    model: nn.Module, batch: dict[str, torch.Tensor], class_weights: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | int]:
    """(summed cross-entropy of the batch's examples, their count); with class weights the sum
    of w[label] * CE and the sum of w[label]."""
    logits = model(batch["input_ids"], attention_mask=batch["attention_mask"])  # (B, n_labels)
    labels = batch["labels"]
    per_example = F.cross_entropy(logits.float(), labels, reduction="none")  # (B,)
    if class_weights is None:
        return per_example.sum(), labels.numel()
    w = class_weights[labels]  # (B,)
    return (per_example * w).sum(), w.sum()


@torch.no_grad()
def held_out_metrics(
    model: nn.Module,
    batches: Sequence[Batch],
    device: torch.device,
    autocast: contextlib.AbstractContextManager | None = None,
) -> dict[str, float]:
    """Validation loss (mean cross-entropy), accuracy and example count (unweighted)."""
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    correct, count = 0, 0
    for batch in batches:
        on_device = arrays_to_device(batch, device)
        with autocast or contextlib.nullcontext():
            logits = model(on_device["input_ids"], attention_mask=on_device["attention_mask"])
        labels = on_device["labels"]
        total += F.cross_entropy(logits.float(), labels, reduction="sum").double()
        correct += int((logits.argmax(dim=-1) == labels).sum())
        count += labels.numel()
    model.train(was_training)
    return {
        "val_loss": float(total.item()) / max(count, 1),
        "val_accuracy": correct / max(count, 1),
        "val_examples": float(count),
    }


def train_classifier(
    model_dir: str | Path,
    labels: Sequence[str] | None,
    train_data: LabelledTokens,
    val_data: LabelledTokens | None,
    out: str | Path,
    settings: ClassifyConfig | None = None,
    *,
    pad_id: int | None = None,
    parents: Sequence[dict] = (),
    data_report: dict[str, Any] | None = None,
    resume: bool = False,
    command: Sequence[str] | None = None,
    now: Callable[[], float] | None = None,
) -> RunResult:
    """Train a classifier of `model_dir` over `labels` into the run directory `out`; its
    `model/` is a classifier model artifact (mode lora: an adapter artifact on the base)."""
    settings = settings or ClassifyConfig()
    if not len(train_data):
        raise InputError("no training examples")
    factory = classify_task_factory(
        model_dir, labels, train_data, val_data, settings, pad_id=pad_id, parents=parents,
        data_report=data_report, command=command,
    )  # fmt: skip
    return train(factory, settings.train, out, resume=resume, command=command, now=now)
