"""Fine-tuning an existing model: full, LoRA, or QLoRA (LoRA over a frozen int8/int4 base).

The data is either a tokens artifact (continued pretraining on a domain corpus: next-token loss
on every position, through the pretraining task started from the model's weights) or
chat/instruction records (train/tasks/sft.py: loss on the assistant turns only, rendered with
the model's own chat template, packed). The mode is orthogonal to the data: either inner task
factory is wrapped by `with_lora` (train/tasks/lora.py) the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pocketlm.checkpoint.weights_spec import read_quantization
from pocketlm.common.errors import ConfigError
from pocketlm.data.sft_examples import SFTDataConfig
from pocketlm.interop.open_model import model_dir as resolve_model
from pocketlm.model.lora import LoRAConfig
from pocketlm.train.config import TrainConfig
from pocketlm.train.loop import RunResult, train
from pocketlm.train.task import RunContext, TaskFactory, TrainTask
from pocketlm.train.tasks.lora import with_lora
from pocketlm.train.tasks.pretrain import PretrainConfig, pretrain_task
from pocketlm.train.tasks.sft import SFTConfig, sft_task_factory, sft_train_defaults


@dataclass(frozen=True)
class FinetuneConfig:
    """`pocketlm finetune` settings: LoRA (rank 0 = full fine-tune), how chat records become
    examples (with --data), the loop's settings and the held-out prompts the end-of-turn rate
    replies to after chat fine-tuning."""

    lora: LoRAConfig = field(default_factory=LoRAConfig)
    data: SFTDataConfig = field(default_factory=SFTDataConfig)
    train: TrainConfig = field(default_factory=sft_train_defaults)
    replay_share: float = 0.1  # with a replay tokens dir: share of micro-batches from it
    end_of_turn_prompts: int = 32  # held-out prompts replied to after chat fine-tuning (0: none)


def finetune_factory(
    model_dir: str | Path,
    tokens_dir: str | Path | None,
    config: FinetuneConfig,
    *,
    data_files: Sequence[str] = (),
    val_files: Sequence[str] = (),
    replay_dir: str | Path | None = None,
    command: Sequence[str] | None = None,
) -> TaskFactory:
    """The task factory of a fine-tuning run of `model_dir` on a tokens artifact (continued
    pretraining) or on chat/instruction `data_files` (SFT), its weights all trained, or through
    a LoRA adapter when config.lora.rank > 0."""
    if (tokens_dir is None) == (not data_files):
        raise ConfigError("give either --tokens (continued pretraining) or --data (chat records)")
    if replay_dir is not None and tokens_dir is None:
        raise ConfigError(
            "--replay mixes original data into continued pretraining: use it with --tokens"
        )
    base = resolve_model(model_dir)  # an HF folder is imported (once) like everywhere else
    lora = config.lora
    scheme = read_quantization(base)["scheme"]
    if not lora.rank and (scheme != "none" or lora.base_quant != "none"):
        raise ConfigError(
            f"{base} is {scheme if scheme != 'none' else lora.base_quant}-quantized: its integer "
            "weights cannot be fine-tuned directly; train a LoRA adapter over it (QLoRA: "
            "--lora-rank 8) or fine-tune the float model"
        )
    if data_files:  # a frozen base under LoRA keeps the dtype it is stored in
        factory = sft_task_factory(
            base, data_files, SFTConfig(config.data, config.train, config.end_of_turn_prompts),
            val_files=val_files, command=command,
            weights_dtype=None if lora.rank else torch.float32,
        )  # fmt: skip
    else:
        inner = PretrainConfig(train=config.train)

        def factory(ctx: RunContext) -> TrainTask:
            return pretrain_task(
                tokens_dir, inner, ctx, command=command, init_from=base,
                replay_dir=replay_dir, replay_share=config.replay_share,
            )  # fmt: skip

    if lora.rank:
        return with_lora(factory, lora, base, command=command)
    return factory


def finetune(
    model_dir: str | Path,
    tokens_dir: str | Path | None,
    out: str | Path,
    config: FinetuneConfig | None = None,
    *,
    data_files: Sequence[str] = (),
    val_files: Sequence[str] = (),
    replay_dir: str | Path | None = None,
    resume: bool = False,
    command: Sequence[str] | None = None,
    now: Callable[[], float] | None = None,
) -> RunResult:
    """Fine-tune `model_dir` on `tokens_dir` or chat `data_files` into the run directory `out`;
    its `model/` is a model artifact (full fine-tune) or an adapter artifact on the base (LoRA /
    QLoRA)."""
    config = config or FinetuneConfig()
    factory = finetune_factory(
        model_dir, tokens_dir, config, data_files=data_files, val_files=val_files,
        replay_dir=replay_dir, command=command,
    )  # fmt: skip
    return train(factory, config.train, out, resume=resume, command=command, now=now)
