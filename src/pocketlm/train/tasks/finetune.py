"""Fine-tuning an existing model: full, LoRA, or QLoRA (LoRA over a frozen int8/int4 base).

Today the data is a tokens artifact (continued pretraining on a domain corpus, next-token loss
on every position, through the pretraining task started from the model's weights). The mode is
orthogonal to the data: any task factory that loads the base's weights is wrapped by
`with_lora` (train/tasks/lora.py) the same way, so chat/instruction data plugs in as another
inner factory.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pocketlm.checkpoint.weights_spec import read_quantization
from pocketlm.common.errors import ConfigError
from pocketlm.interop.open_model import model_dir as resolve_model
from pocketlm.model.lora import LoRAConfig
from pocketlm.train.config import OptimConfig, ScheduleConfig, TrainConfig
from pocketlm.train.loop import RunResult, train
from pocketlm.train.task import RunContext, TaskFactory, TrainTask
from pocketlm.train.tasks.lora import with_lora
from pocketlm.train.tasks.pretrain import PretrainConfig, pretrain_task


def _finetune_train_defaults() -> TrainConfig:
    """Fine-tuning defaults: AdamW at 2e-4 without weight decay, a short warm-up, cosine decay."""
    return TrainConfig(
        optim=OptimConfig(kind="adamw", lr=2e-4, weight_decay=0.0),
        schedule=ScheduleConfig(kind="cosine", warmup_fraction=0.03),
    )


@dataclass(frozen=True)
class FinetuneConfig:
    """`pocketlm finetune` settings: LoRA (rank 0 = full fine-tune) and the loop's settings."""

    lora: LoRAConfig = field(default_factory=LoRAConfig)
    train: TrainConfig = field(default_factory=_finetune_train_defaults)


def finetune_factory(
    model_dir: str | Path,
    tokens_dir: str | Path,
    config: FinetuneConfig,
    *,
    command: Sequence[str] | None = None,
) -> TaskFactory:
    """The task factory of a fine-tuning run on a tokens artifact: continued pretraining of
    `model_dir`, its weights all trained, or through a LoRA adapter when config.lora.rank > 0."""
    base = resolve_model(model_dir)  # an HF folder is imported (once) like everywhere else
    lora = config.lora
    scheme = read_quantization(base)["scheme"]
    if not lora.rank and (scheme != "none" or lora.base_quant != "none"):
        raise ConfigError(
            f"{base} is {scheme if scheme != 'none' else lora.base_quant}-quantized: its integer "
            "weights cannot be fine-tuned directly; train a LoRA adapter over it (QLoRA: "
            "--lora-rank 8) or fine-tune the float model"
        )
    inner = PretrainConfig(train=config.train)

    def factory(ctx: RunContext) -> TrainTask:
        return pretrain_task(tokens_dir, inner, ctx, command=command, init_from=base)

    if lora.rank:
        return with_lora(factory, lora, base, command=command)
    return factory


def finetune(
    model_dir: str | Path,
    tokens_dir: str | Path,
    out: str | Path,
    config: FinetuneConfig | None = None,
    *,
    resume: bool = False,
    command: Sequence[str] | None = None,
    now: Callable[[], float] = time.perf_counter,
) -> RunResult:
    """Fine-tune `model_dir` on `tokens_dir` into the run directory `out`; its `model/` is a
    model artifact (full fine-tune) or an adapter artifact on the base (LoRA / QLoRA)."""
    config = config or FinetuneConfig()
    factory = finetune_factory(model_dir, tokens_dir, config, command=command)
    return train(factory, config.train, out, resume=resume, command=command, now=now)
