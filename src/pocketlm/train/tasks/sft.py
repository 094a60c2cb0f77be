"""Chat / instruction fine-tuning (SFT) of an existing model, through the one training loop.

`sft_task_factory(model_dir, data_files, settings)` reads the records (data/sft_examples.py),
tokenises them with the model's own tokenizer and chat template with a mask of what the model
should learn (data/sft_tokens.py: each assistant turn's content and its closing stop token),
packs them into rows of train.ctx positions (data/packing.py; settings.data.packing=False: one
example per padded row) and returns the TaskFactory the loop calls once its device and precision
are known. The data is read before that, so a bad record stops the command before a model loads.

The task: the model with its weights (fp32 master weights unless weights_dtype says otherwise),
loss = the masked targets' summed cross-entropy and their count (the loop divides once per
step, so every assistant token weighs the same however the rows pack), packed rows attending
only within each example (CausalLM's doc_ids / positions), evaluation = the held-out examples'
loss on their assistant tokens, after the last step the end-of-turn rate of greedy replies to
held-out prompts (train/end_of_turn.py), checkpoints and the final model as model artifacts carrying the
base's tokenizer, chat template and generation_config.json. LoRA wraps this factory unchanged
(train/tasks/lora.py: with_lora(sft_task_factory(...), lora, model_dir)).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pocketlm.checkpoint.layout import resolve_model_dir
from pocketlm.checkpoint.model_check import check_model_dir
from pocketlm.checkpoint.model_io import load_model, read_weights, save_model_state
from pocketlm.common.config import to_dict
from pocketlm.common.errors import ArtifactError, ConfigError, InputError
from pocketlm.common.log import get_logger
from pocketlm.common.manifest import parent_ref
from pocketlm.data.packing import IGNORE_INDEX, PackedRows, fill_ratio, pack_examples
from pocketlm.data.sft_examples import Annotate, SFTData, SFTDataConfig, load_sft_data
from pocketlm.data.sft_loader import Batch, PackedBatches, eval_batches
from pocketlm.model.summary import describe as describe_shape
from pocketlm.tokenizer.tokenizer import Tokenizer
from pocketlm.train.config import OptimConfig, ScheduleConfig, TrainConfig
from pocketlm.train.end_of_turn import end_of_turn_rate, reply_prompts
from pocketlm.train.loop import RunResult, train
from pocketlm.train.roles import roles_by_structure
from pocketlm.train.task import (
    RunContext,
    SaveRequest,
    TaskFactory,
    TrainTask,
    arrays_to_device,
)

_log = get_logger("pocketlm.train.sft")


def sft_train_defaults() -> TrainConfig:
    """Fine-tuning defaults: AdamW at 2e-4 without weight decay, a short warm-up, cosine decay."""
    return TrainConfig(
        optim=OptimConfig(kind="adamw", lr=2e-4, weight_decay=0.0),
        schedule=ScheduleConfig(kind="cosine", warmup_fraction=0.03),
    )


@dataclass(frozen=True)
class SFTConfig:
    """Chat fine-tuning settings: how records become examples, and the loop's settings (train.ctx
    is the row length; train.eval_tokens caps the positions of held-out rows evaluated;
    end_of_turn_prompts held-out prompts are replied to after training, 0: none)."""

    data: SFTDataConfig = field(default_factory=SFTDataConfig)
    train: TrainConfig = field(default_factory=sft_train_defaults)
    end_of_turn_prompts: int = 32


def sft_task_factory(
    model_dir: str | Path,
    data_files: Sequence[str],
    settings: SFTConfig,
    *,
    val_files: Sequence[str] = (),
    command: Sequence[str] | None = None,
    weights_dtype: torch.dtype | None = torch.float32,
) -> TaskFactory:
    """The task factory of chat fine-tuning `model_dir` on `data_files` (validation: val_files,
    else settings.data.val_fraction of the records); weights_dtype None keeps the weights as
    stored (a frozen bf16 base under LoRA)."""
    base = resolve_model_dir(model_dir)
    checked = check_model_dir(base)
    model_config, tokenizer = checked.config, checked.tokenizer
    tc = settings.train
    if tc.ctx > model_config.max_seq_len:
        raise ConfigError(f"ctx {tc.ctx} exceeds the model's context {model_config.max_seq_len}")
    if not tokenizer.has_chat_template:
        raise InputError(
            f"{base}: the model has no chat template, so chat data has no format to train in",
            hint="fine-tune a model with a chat template (PocketLM's own models have one), or "
            "continue pretraining on plain text instead",
        )
    chat = chat_rows(tokenizer, data_files, settings.data, tc.ctx, val_files=val_files)
    data, train_rows, val_rows, report = chat.data, chat.train, chat.val, chat.report
    packing = settings.data.packing
    parents = [parent_ref(base), *chat.parents]

    def factory(ctx: RunContext) -> TrainTask:
        model = load_model(base, dtype=weights_dtype).model.train()
        batches = PackedBatches(
            train_rows,
            tc.batch_size,
            seed=tc.seed,
            rank=ctx.dist.rank,
            world_size=ctx.dist.world_size,
            packed=packing,
        )
        held_out = eval_batches(
            val_rows.select(np.arange(min(len(val_rows), max(1, tc.eval_tokens // tc.ctx)))),
            tc.batch_size,
            packed=packing,
        )

        def save(request: SaveRequest) -> Path:
            return save_model_state(
                request.out,
                request.state,
                model_config,
                base,
                parents=parents,
                config={"task": "sft", **to_dict(settings)},
                summary={**request.summary, "sft_data": _compact(report)},
                command=command,
                overwrite=request.overwrite,
                extra=request.add_files,
            )

        def load(checkpoint: Path) -> dict[str, torch.Tensor]:
            tensors = read_weights(checkpoint)
            expected = set(model.state_dict())
            if model_config.tie_embeddings:
                expected.discard("lm_head.weight")
            missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
            if missing or unexpected:
                raise ArtifactError(
                    f"{checkpoint}: weights do not match this model "
                    f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
                )
            return tensors

        def evaluate(m: nn.Module, run_ctx: RunContext) -> dict[str, float]:
            total, count = held_out_loss(m, held_out, run_ctx.device, run_ctx.autocast())
            return {"val_loss": total / max(count, 1), "val_targets": float(count)}

        def finish(m: nn.Module, run_ctx: RunContext) -> dict[str, float]:
            result = end_of_turn_rate(
                m, eot_prompts, tokenizer.stop_ids, device=run_ctx.device,
                autocast=run_ctx.autocast(),
            )  # fmt: skip
            _log.info(
                "end-of-turn rate %.3f: %d of %d held-out greedy replies ended within %d tokens",
                result.rate, result.ended, result.prompts, result.budget,
            )  # fmt: skip
            return result.metrics()

        eot_prompts = reply_prompts(data.val, settings.end_of_turn_prompts)
        return TrainTask(
            name="sft",
            model=model,
            batches=batches,
            loss=masked_loss,
            to_device=arrays_to_device,
            tokens_per_batch=tc.batch_size * tc.ctx,
            roles=roles_by_structure(model, heads=[model.lm_head]),
            save=save,
            load=load,
            evaluate=evaluate if held_out else None,
            finish=finish if eot_prompts.prompts else None,
            flops_per_token=model_config.flops_per_token(tc.ctx, training=True),
            describe={
                "model": model_config.to_dict(),
                **describe_shape(model_config, tc.ctx),
                "base": str(base),
                "data": report,
            },
        )

    return factory


@dataclass(frozen=True)
class ChatRows:
    """Chat records as training rows: the tokenised examples, their packed (or padded) train
    and validation rows, the data report and the data files' manifest references."""

    data: SFTData
    train: PackedRows
    val: PackedRows
    report: dict
    parents: list[dict]


def chat_rows(
    tokenizer: Tokenizer,
    data_files: Sequence[str],
    settings: SFTDataConfig,
    ctx: int,
    *,
    val_files: Sequence[str] = (),
    annotate: Annotate | None = None,
) -> ChatRows:
    """Read and tokenise chat records with the tokenizer's chat template (the loss mask on the
    assistant turns) and pack them into rows of ctx positions (`annotate`: load_sft_data's)."""
    data = load_sft_data(
        data_files, tokenizer, settings, ctx + 1, val_specs=val_files, annotate=annotate
    )
    pad_id = next((i for i in (tokenizer.pad_id, tokenizer.eos_id) if i is not None), 0)
    train_rows = pack_examples(data.train, ctx, pad_id, packing=settings.packing)
    val_rows = pack_examples(data.val, ctx, pad_id, packing=settings.packing)
    report = {
        **data.report,
        "rows": {
            "packing": settings.packing,
            "ctx": ctx,
            "train": len(train_rows),
            "val": len(val_rows),
            "train_fill": round(fill_ratio(data.train, train_rows), 4),
        },
    }
    parents = [_data_ref(f) for f in (*data_files, *val_files)]
    return ChatRows(data, train_rows, val_rows, report, parents)


def masked_loss(
    model: nn.Module, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed cross-entropy of the batch's targets, their count): padding and the tokens the
    mask leaves out (-100) are no targets; packed rows attend only within each example."""
    targets = batch["targets"]
    loss = model(
        batch["input_ids"],
        targets=targets,
        reduction="sum",
        positions=batch.get("positions"),
        doc_ids=batch.get("doc_ids"),
    )
    return loss, (targets != IGNORE_INDEX).sum()


@torch.no_grad()
def held_out_loss(
    model: nn.Module,
    batches: Sequence[Batch],
    device: torch.device,
    autocast: contextlib.AbstractContextManager | None = None,
) -> tuple[float, int]:
    """(summed loss, targets) of held-out rows: the loss on the assistant tokens only."""
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    for batch in batches:
        on_device = arrays_to_device(batch, device)
        with autocast or contextlib.nullcontext():
            loss, n = masked_loss(model, on_device)
        total += loss.double()
        count += int(n)
    model.train(was_training)
    return float(total.item()), count


def sft(
    model_dir: str | Path,
    data_files: Sequence[str],
    out: str | Path,
    settings: SFTConfig | None = None,
    *,
    val_files: Sequence[str] = (),
    resume: bool = False,
    command: Sequence[str] | None = None,
    now: Callable[[], float] | None = None,
) -> RunResult:
    """Fine-tune `model_dir` on chat data into the run directory `out` (full fine-tune)."""
    settings = settings or SFTConfig()
    factory = sft_task_factory(
        model_dir, data_files, settings, val_files=val_files, command=command
    )
    return train(factory, settings.train, out, resume=resume, command=command, now=now)


def _data_ref(spec: str) -> dict:
    """A manifest parent for a data argument: a file with its hash, else its path."""
    path = Path(spec.removeprefix("hf:"))
    return parent_ref(path) if path.is_file() else {"path": str(path), "kind": "sft_data"}


def _compact(report: dict) -> dict:
    """The data report without its long lists (for the model's manifest summary)."""
    bad = report["bad_records"]
    return {**report, "bad_records": {"total": bad["total"], "counts": bad["counts"]}}
