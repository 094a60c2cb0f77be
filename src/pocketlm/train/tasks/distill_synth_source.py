"""Black-box distillation's data (`pocketlm distill --data SYNTH` with no --teacher and no
--cache): the chat records `pocketlm synth` wrote, in the student's own chat template as in
SFT, with the teacher's stored top_logprobs as sparse targets on the student's tokens.

Each record's last assistant reply is aligned with the student's tokens of it by byte spans
(data/sparse_targets.py); a batch carries, beside input_ids and targets, teacher_ids and
teacher_logprobs (B, T, k) and teacher_valid (B, T): at valid positions the loss is the sparse
forward KL mixed with the hard label, elsewhere (another split, the end-of-turn token, a record
without targets) the hard label alone. The aligned share (positions with a target / assistant
positions) goes to the log and the run's summary; data with no target at all is refused.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pocketlm.common.errors import ArtifactError, ConfigError, InputError
from pocketlm.common.log import get_logger
from pocketlm.common.manifest import parent_ref, read_manifest
from pocketlm.data.packing import IGNORE_INDEX, PackedRows, plan_rows
from pocketlm.data.sft_examples import SFTDataConfig, SFTExample
from pocketlm.data.sft_loader import PackedBatches, eval_batches
from pocketlm.data.sft_tokens import SFTTokens
from pocketlm.data.sparse_targets import SparseTargets, pack_targets, record_targets
from pocketlm.tokenizer.token_bytes import vocab_bytes
from pocketlm.tokenizer.tokenizer import Tokenizer
from pocketlm.train.config import TrainConfig
from pocketlm.train.distill_loss import sparse_forward_kl
from pocketlm.train.distill_pair import is_preset, open_language_model
from pocketlm.train.task import ResumableBatches, RunContext, arrays_to_device
from pocketlm.train.tasks.distill_sources import DistillData
from pocketlm.train.tasks.sft import chat_rows

_log = get_logger("pocketlm.distill")
NO_TARGETS_HINT = (
    "train on the replies alone with `pocketlm finetune --data ...`, or distill from a live "
    "--teacher DIR"
)


@dataclass(frozen=True)
class StoredTeacher:
    """Stored targets as the teacher: the data, the student's tokenizer (and the directory its
    files are copied from), the student's context and the teacher's manifest reference."""

    data: DistillData
    tokenizer: Tokenizer
    tokenizer_dir: Path
    context: int
    ref: dict[str, Any]


def stored_teacher(
    student: str,
    data_files: Sequence[str],
    val_files: Sequence[str],
    data_config: SFTDataConfig,
    tc: TrainConfig,
    *,
    loss: str,
    top_k: int,
) -> StoredTeacher:
    """The synth records read with the student's tokenizer (a model directory's: a fresh
    preset has none to read text with), their stored targets aligned (ConfigError for
    settings stored targets cannot serve)."""
    if loss != "forward_kl" or top_k:
        raise ConfigError(
            "stored targets are the teacher's top log-probabilities: they support the forward KL "
            f"over them and the rest (--loss forward_kl, no --top-k), not loss={loss}, "
            f"top_k={top_k}; use a live --teacher for the others"
        )
    if not data_files:
        raise ConfigError(
            "give a live --teacher DIR or a --cache DIR (with no teacher, --data FILE... reads "
            "the targets `pocketlm synth` stored; token windows have none)"
        )
    if is_preset(student):
        raise ConfigError(
            f"a fresh preset student ({student}) has no tokenizer to read the teacher's text "
            "with: give a student model directory (trained or imported) for stored targets, or "
            "a live --teacher DIR whose tokenizer a preset takes"
        )
    checked = open_language_model(student, "student")
    data = synth_source(data_files, val_files, checked.tokenizer, data_config, tc)
    return StoredTeacher(
        data, checked.tokenizer, checked.directory, checked.config.max_seq_len,
        _teacher_ref(data_files, data.report),
    )  # fmt: skip


def _teacher_ref(data_files: Sequence[str], report: Mapping[str, Any]) -> dict[str, Any]:
    """The synth output the targets came from (its manifest), else the first data file."""
    for spec in data_files:
        path = Path(spec)
        directory = path if path.is_dir() else path.parent
        try:
            read_manifest(directory, kind="synth")
        except ArtifactError:
            continue
        return {**parent_ref(directory), "models": report["stored_targets"]["teacher_models"]}
    return {"path": str(Path(data_files[0]).resolve()), "kind": "stored_targets"}


def synth_source(
    data_files: Sequence[str],
    val_files: Sequence[str],
    tokenizer: Tokenizer,
    data_config: SFTDataConfig,
    tc: TrainConfig,
) -> DistillData:
    """Chat records with stored teacher targets as packed rows carrying them (InputError when
    no training record has targets, or none lines up with the student's tokens)."""
    if not tokenizer.has_chat_template:
        raise InputError(
            "the student's tokenizer has no chat template, so chat data has no format to train in"
        )
    vocab = vocab_bytes(tokenizer)
    models: Counter = Counter()

    def annotate(example: SFTExample, tokens: SFTTokens) -> SparseTargets | None:
        teacher = (
            example.row.fields.get("teacher") if isinstance(example.row.fields, dict) else None
        )
        teacher = teacher if isinstance(teacher, dict) else {}
        if isinstance(teacher.get("model"), str):
            models[teacher["model"]] += 1
        stored = teacher.get("logprobs")
        try:
            return record_targets(tokens, example.messages, stored or None, vocab)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            raise example.row.error(
                f"unreadable teacher.logprobs ({type(exc).__name__}: {exc})",
                hint="each entry is {token, logprob, top: [[text, logprob(, bytes)], ...]}",
            ) from None

    chat = chat_rows(tokenizer, data_files, data_config, tc.ctx, val_files=val_files,
                     annotate=annotate)  # fmt: skip
    packing = data_config.packing
    train = with_targets(chat.train, chat.data.train, chat.data.train_notes, tc.ctx, packing)
    val = with_targets(chat.val, chat.data.val, chat.data.val_notes, tc.ctx, packing)
    share = {**aligned_share(chat.data.train, chat.data.train_notes),
             "teacher_models": dict(models)}  # fmt: skip
    _check_share(share, data_files)
    _log.info(
        "stored teacher targets: %d of %d records, %d of %d assistant positions aligned (%.1f%%)",
        share["records_with_targets"], share["records"], share["aligned_positions"],
        share["assistant_positions"], 100 * share["aligned_share"],
    )  # fmt: skip
    held_out = eval_batches(
        val.select(np.arange(min(len(val), max(1, tc.eval_tokens // tc.ctx)))),
        tc.batch_size,
        packed=packing,
    )

    def batches(ctx: RunContext) -> ResumableBatches:
        return PackedBatches(
            train, tc.batch_size, seed=tc.seed, rank=ctx.dist.rank,
            world_size=ctx.dist.world_size, packed=packing,
        )  # fmt: skip

    def evaluate(m: nn.Module, run_ctx: RunContext) -> dict[str, float]:
        return held_out_metrics(m, held_out, run_ctx)

    report = {k: v for k, v in chat.report.items() if k != "bad_records"}
    return DistillData(
        kind="synth",
        batches=batches,
        evaluate=evaluate if held_out else None,
        requests=None,
        parents=chat.parents,
        report={**report, "stored_targets": share},
    )


def with_targets(
    rows: PackedRows,
    examples: Sequence[SFTTokens],
    notes: Sequence[SparseTargets | None],
    ctx: int,
    packing: bool,
) -> PackedRows:
    """The rows chat_rows packed, carrying the examples' targets (the same plan, recomputed)."""
    plan = plan_rows([len(e.ids) - 1 for e in examples], ctx, packing)
    return replace(rows, extra=pack_targets(examples, notes, plan, ctx))


def aligned_share(
    examples: Sequence[SFTTokens], notes: Sequence[SparseTargets | None]
) -> dict[str, Any]:
    """Records, those with stored targets, assistant positions and those with a target."""
    assistant = sum(sum(e.loss_mask[1:]) for e in examples)
    aligned = sum(
        int((n.valid[1:] & np.asarray(e.loss_mask[1:], dtype=bool)).sum())
        for e, n in zip(examples, notes, strict=True)
        if n is not None
    )
    return {
        "records": len(examples),
        "records_with_targets": sum(n is not None for n in notes),
        "assistant_positions": assistant,
        "aligned_positions": aligned,
        "aligned_share": round(aligned / assistant, 4) if assistant else 0.0,
    }


def _check_share(share: Mapping[str, Any], data_files: Sequence[str]) -> None:
    """InputError when there is nothing to distill from."""
    where = ", ".join(data_files)
    if not share["records_with_targets"]:
        raise InputError(
            f"no training record of {where} has stored teacher targets (teacher.logprobs: "
            "`pocketlm synth` keeps them when the API returns top_logprobs)",
            hint=NO_TARGETS_HINT,
        )
    if not share["aligned_positions"]:
        raise InputError(
            f"none of the student's assistant tokens lines up with a teacher token in {where} "
            "(the teacher's tokens never span the same bytes as the student's)",
            hint=NO_TARGETS_HINT,
        )


@torch.no_grad()
def held_out_metrics(
    model: nn.Module, batches: Sequence[dict[str, np.ndarray]], run_ctx: RunContext
) -> dict[str, float]:
    """The held-out assistant tokens' loss, and the sparse KL to the teacher where aligned."""
    was_training = model.training
    model.eval()
    ce = kl = 0.0
    count = aligned = 0
    for host in batches:
        batch = arrays_to_device(host, run_ctx.device)
        mask = batch["targets"] != IGNORE_INDEX  # (B, T)
        valid = batch["teacher_valid"] & mask  # (B, T)
        with run_ctx.autocast():
            logits = model(batch["input_ids"], positions=batch.get("positions"),
                           doc_ids=batch.get("doc_ids"))  # fmt: skip
        ce += float(torch.nn.functional.cross_entropy(
            logits[mask].float(), batch["targets"][mask], reduction="sum"))  # fmt: skip
        kl += float(sparse_forward_kl(
            logits[valid], batch["teacher_ids"][valid], batch["teacher_logprobs"][valid]).sum())  # fmt: skip
        count += int(mask.sum())
        aligned += int(valid.sum())
    model.train(was_training)
    out = {"val_loss": ce / max(count, 1), "val_targets": float(count)}
    if aligned:
        out["val_teacher_kl"] = kl / aligned
    return out
