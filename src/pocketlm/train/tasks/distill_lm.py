"""Knowledge distillation of a language model into a smaller student, through the one training
loop (`pocketlm distill`).

The teacher runs inside the task's loss under no_grad, in eval mode, on the student's very
batch (inside the run's autocast); the student trains. Per target position (every position of
a token window; the assistant tokens of a chat row):

    loss = (1 - hard_weight) * D(teacher, student) + hard_weight * cross-entropy(student, label)

D is one of train/distill_loss.KINDS at `temperature` (forward KL, reverse KL, generalised JSD
of weight beta, total variation), or, with a top-k teacher (top_k > 0, or a cache), the
forward KL over the teacher's k most likely tokens plus one outcome for the rest
(sparse_forward_kl: the mass the teacher did not list is matched explicitly, not dropped).
The loop divides the summed loss by the number of target positions.

On-policy batches (on_policy = their share, train/on_policy.py): the student continues data
prompts with its own samples, and D alone scores the positions it sampled from (there is no
label to mix in).

Teacher and student share the tokenizer; a padded teacher vocabulary is trimmed to the
student's (train/distill_pair.py). The student is a model directory (trained whole, or a LoRA
adapter on it with lora.rank > 0) or a preset built fresh with the teacher's tokenizer. With a
cache (`pocketlm distill cache`) the teacher is never loaded.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pocketlm.checkpoint.model_check import CheckedModel
from pocketlm.checkpoint.model_io import load_model, read_weights, save_model_state
from pocketlm.common.config import to_dict
from pocketlm.common.errors import ArtifactError, ConfigError
from pocketlm.common.manifest import parent_ref
from pocketlm.data.packing import IGNORE_INDEX
from pocketlm.data.sft_examples import SFTDataConfig
from pocketlm.model.lora import LoRAConfig
from pocketlm.model.summary import describe as describe_shape
from pocketlm.model.transformer import build_model
from pocketlm.tokenizer.tokenizer import Tokenizer
from pocketlm.train.config import TrainConfig
from pocketlm.train.distill_loss import KINDS, position_losses, top_k_logprobs
from pocketlm.train.distill_pair import (
    StudentSource,
    open_language_model,
    resolve_student,
    teacher_logits,
)
from pocketlm.train.distributed import unwrap
from pocketlm.train.linear_sparse_kl import linear_sparse_kl, plain_head_weight
from pocketlm.train.loop import RunResult, train
from pocketlm.train.on_policy import OnPolicyBatches, SampleRequest, sample_rows
from pocketlm.train.roles import roles_by_structure
from pocketlm.train.task import (
    RunContext,
    SaveRequest,
    TaskFactory,
    TrainTask,
    arrays_to_device,
)
from pocketlm.train.tasks.distill_sources import (
    DistillData,
    cache_source,
    chat_source,
    token_source,
)
from pocketlm.train.tasks.distill_synth_source import stored_teacher
from pocketlm.train.tasks.lora import with_lora


@dataclass(frozen=True)
class DistillConfig:
    """`pocketlm distill` settings: the divergence (`loss`, one of KINDS) at `temperature`
    (beta: the JSD's weight), the share of hard-label cross-entropy mixed in, a live teacher
    known by its top_k tokens only (0: its whole distribution), the share of on-policy batches
    and their prompt length on token windows (0: half the window), LoRA (rank 0: the whole
    student trains), how chat records become rows, and the loop's settings."""

    loss: str = "forward_kl"
    temperature: float = 1.0
    beta: float = 0.5
    hard_weight: float = 0.0
    top_k: int = 0
    on_policy: float = 0.0
    prompt_tokens: int = 0
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    data: SFTDataConfig = field(default_factory=SFTDataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if self.loss not in KINDS:
            raise ConfigError(f"loss must be one of {', '.join(KINDS)}, got {self.loss!r}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ConfigError(f"temperature must be finite and > 0, got {self.temperature}")
        if self.loss == "jsd" and not 0.0 < self.beta < 1.0:
            raise ConfigError(f"jsd needs 0 < beta < 1, got {self.beta}")
        if not 0.0 <= self.hard_weight <= 1.0:
            raise ConfigError(f"hard_weight must be in [0, 1], got {self.hard_weight}")
        if not 0.0 <= self.on_policy <= 1.0:
            raise ConfigError(f"on_policy must be a share in [0, 1], got {self.on_policy}")
        if self.top_k < 0 or self.prompt_tokens < 0:
            raise ConfigError("top_k and prompt_tokens must be >= 0")


def distill_factory(
    student: str,
    config: DistillConfig,
    *,
    teacher_dir: str | Path | None = None,
    tokens_dir: str | Path | None = None,
    data_files: Sequence[str] = (),
    val_files: Sequence[str] = (),
    cache_dir: str | Path | None = None,
    command: Sequence[str] | None = None,
) -> TaskFactory:
    """The task factory distilling the teacher `teacher_dir` (or a cache of it) into `student`
    (a model directory or a preset name) on one data source: token windows, chat records or
    the cache. Everything is checked, and the data read, before a model loads."""
    if sum(x is not None and x != () for x in (tokens_dir, tuple(data_files), cache_dir)) != 1:
        raise ConfigError("give one data source: --tokens DIR, --data FILE... or --cache DIR")
    if cache_dir is not None and teacher_dir is not None:
        raise ConfigError(
            "give --teacher DIR (a live teacher) or --cache DIR (its cached top-k), not both"
        )
    tc = config.train
    if cache_dir is not None:
        side = _from_cache(cache_dir, config)
    elif teacher_dir is not None:
        side = _from_teacher(teacher_dir, config, tokens_dir, data_files, val_files)
    else:
        side = _from_stored(student, config, data_files, val_files)
    data, teacher_checked, teacher_ref = side.data, side.checked, side.ref
    tokenizer_dir, teacher_context = side.tokenizer_dir, side.context
    source = resolve_student(student, side.tokenizer, side.vocab, teacher_context)
    for what, context in (("teacher", teacher_context), ("student", source.config.max_seq_len)):
        if tc.ctx > context:
            raise ConfigError(f"ctx {tc.ctx} exceeds the {what}'s context {context}: lower --ctx")
    if config.on_policy and data.requests is None:
        raise ConfigError(
            "on-policy distillation scores the student's own samples with the live teacher; a "
            "cache (or a synth output) holds scores of the data only: use --teacher for --on-policy"
        )
    if config.lora.rank and source.checked is None:
        raise ConfigError(
            f"a LoRA adapter needs a trained student to adapt, not a fresh {source.label}: "
            "give a student model directory, or drop --lora-rank"
        )
    parents = [teacher_ref, *([parent_ref(source.checked.directory)] if source.checked else []),
               *data.parents]  # fmt: skip
    summary_extra = {
        "teacher": teacher_ref["path"],
        "student": source.label,
        "distill": {
            "loss": "sparse_forward_kl" if _sparse(config, data) else config.loss,
            "temperature": config.temperature,
            "hard_weight": config.hard_weight,
            "on_policy": config.on_policy,
            "data": data.kind,
        },
    }
    if teacher_checked is not None:
        summary_extra["teacher_params"] = teacher_checked.config.num_params()

    def factory(ctx: RunContext) -> TrainTask:
        teacher = None
        if teacher_checked is not None:
            teacher = load_model(teacher_checked.directory, dtype=torch.float32).model
            teacher = teacher.to(ctx.device).eval().requires_grad_(False)
        model = _student_model(source, tc.seed)
        return _task(
            model, teacher, data, config, ctx, source, tokenizer_dir, parents, summary_extra,
            command,
        )  # fmt: skip

    if config.lora.rank:
        assert source.checked is not None
        return with_lora(factory, config.lora, source.checked.directory, command=command)
    return factory


@dataclass(frozen=True)
class _TeacherSide:
    """What the teacher (live, or its cache) brings: the data, the tokenizer (and the dir its
    files are copied from), its vocabulary (None: a cache, whose ids are the tokenizer's, so a
    student of any vocabulary holding them learns), context and manifest reference."""

    data: DistillData
    tokenizer: Tokenizer
    tokenizer_dir: Path
    vocab: int | None
    context: int
    ref: dict[str, Any]
    checked: CheckedModel | None  # the live teacher


def _from_cache(cache_dir: str | Path, config: DistillConfig) -> _TeacherSide:
    """A cache as the teacher: its windows, tokenizer and the teacher it was made from."""
    data = cache_source(cache_dir, config.train)
    cache = data.cache
    assert cache is not None
    _check_cache_settings(config, cache.top_k)
    ref = {k: v for k, v in cache.teacher.items() if k != "max_seq_len"}
    return _TeacherSide(
        data, Tokenizer.load(cache.tokenizer_dir), cache.tokenizer_dir, None,
        cache.teacher["max_seq_len"], ref, None,
    )  # fmt: skip


def _from_stored(
    student: str, config: DistillConfig, data_files: Sequence[str], val_files: Sequence[str]
) -> _TeacherSide:
    """The targets `pocketlm synth` stored, aligned with the student's own tokens."""
    s = stored_teacher(student, data_files, val_files, config.data, config.train,
                       loss=config.loss, top_k=config.top_k)  # fmt: skip
    return _TeacherSide(s.data, s.tokenizer, s.tokenizer_dir, None, s.context, s.ref, None)


def _from_teacher(
    teacher_dir: str | Path | None,
    config: DistillConfig,
    tokens_dir: str | Path | None,
    data_files: Sequence[str],
    val_files: Sequence[str],
) -> _TeacherSide:
    """A live teacher and the token windows or chat rows it scores."""
    assert teacher_dir is not None
    checked = open_language_model(teacher_dir, "teacher")
    if config.top_k and config.loss != "forward_kl":
        raise ConfigError(
            f"a top-k teacher supports the forward KL only (over its k tokens and the rest), "
            f"not {config.loss}: drop --top-k or use --loss forward_kl"
        )
    tokenizer, vocab, tc = checked.tokenizer, checked.config.vocab_size, config.train
    if tokens_dir is not None:
        data = token_source(tokens_dir, tokenizer, vocab, tc, config.prompt_tokens)
    else:
        data = chat_source(data_files, val_files, tokenizer, config.data, tc)
    return _TeacherSide(
        data, tokenizer, checked.directory, vocab, checked.config.max_seq_len,
        parent_ref(checked.directory), checked,
    )  # fmt: skip


def _check_cache_settings(config: DistillConfig, cache_k: int) -> None:
    """ConfigError for settings a cache cannot serve."""
    if config.loss != "forward_kl":
        raise ConfigError(
            f"a cache holds the teacher's top-k only: it supports the forward KL (over the k "
            f"tokens and the rest), not {config.loss}; use --loss forward_kl or a live --teacher"
        )
    if config.top_k not in (0, cache_k):
        raise ConfigError(f"the cache holds the top {cache_k}, not {config.top_k}: drop --top-k")


def _sparse(config: DistillConfig, data: DistillData) -> bool:
    """Whether the teacher is known by its top-k only (a cache, stored targets, a live top-k)."""
    return data.cache is not None or data.kind == "synth" or config.top_k > 0


def _student_model(source: StudentSource, seed: int) -> nn.Module:
    """The student in fp32: the directory's weights, or a fresh preset model from `seed`."""
    if source.checked is None:
        return build_model(source.config, seed=seed).train()
    return load_model(source.checked.directory, dtype=torch.float32).model.train()


def _task(
    student: nn.Module,
    teacher: nn.Module | None,
    data: DistillData,
    config: DistillConfig,
    ctx: RunContext,
    source: StudentSource,
    tokenizer_dir: Path,
    parents: list[dict],
    summary_extra: dict[str, Any],
    command: Sequence[str] | None,
) -> TrainTask:
    tc = config.train
    model_config = student.config
    vocab = model_config.vocab_size
    sparse = _sparse(config, data)
    batches = data.batches(ctx)
    if config.on_policy:
        assert data.requests is not None
        batches = OnPolicyBatches(batches, config.on_policy, data.requests(batches, ctx))

    def teacher_view(batch: dict[str, torch.Tensor], ids: torch.Tensor, mask: torch.Tensor):
        """The teacher at the masked positions: logits (N, vocab) or top-k (ids, log-probs)."""
        if "teacher_ids" in batch:  # the cache, or stored targets (valid where they exist)
            view = batch["teacher_ids"][mask], batch["teacher_logprobs"][mask]
            return (*view, batch["teacher_valid"][mask]) if "teacher_valid" in batch else view
        assert teacher is not None
        logits = teacher_logits(
            teacher, ids, vocab, positions=batch.get("positions"), doc_ids=batch.get("doc_ids")
        )[mask]  # (N, vocab)
        return top_k_logprobs(logits, config.top_k) if sparse else logits

    # the head fused with the sparse KL (no (B, T, vocab) logits); one process: a weight used
    # outside the forward would escape DDP's gradient hooks
    head = plain_head_weight(student) if sparse and ctx.dist.world_size == 1 else None

    def loss(m: nn.Module, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(batch, SampleRequest):
            ids, mask = sample_rows(unwrap(m), batch, ctx.device)  # (B, L) each
            batch, labels = {}, None
        else:
            ids, targets = batch["input_ids"], batch["targets"]
            mask = targets != IGNORE_INDEX  # (B, T)
            labels = targets[mask]  # (N,)
        where = {"positions": batch.get("positions"), "doc_ids": batch.get("doc_ids")}
        view = teacher_view(batch, ids, mask)
        if head is not None and labels is not None and isinstance(view, tuple) and len(view) == 2:
            hidden = m(ids, **where, output_hidden=True)[mask]  # (N, dim)
            total = linear_sparse_kl(
                hidden, head, *view, labels,
                temperature=config.temperature, hard_weight=config.hard_weight,
            )  # fmt: skip
            return total, mask.sum()
        logits = m(ids, **where)
        return position_losses(logits[mask], view, labels, config).sum(), mask.sum()

    def finish(m: nn.Module, run_ctx: RunContext) -> dict[str, float]:
        if teacher is None or data.evaluate is None:
            return {}
        return {f"teacher_{k}": v for k, v in data.evaluate(teacher, run_ctx).items()}

    def save(request: SaveRequest) -> Path:
        return save_model_state(
            request.out, request.state, model_config, tokenizer_dir, parents=parents,
            config={"task": "distill", **to_dict(config)},
            summary={**request.summary, **summary_extra, "distill_data": data.report},
            command=command, overwrite=request.overwrite, extra=request.add_files,
        )  # fmt: skip

    def load(checkpoint: Path) -> dict[str, torch.Tensor]:
        tensors = read_weights(checkpoint)
        expected = set(student.state_dict())
        if model_config.tie_embeddings:
            expected.discard("lm_head.weight")
        missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
        if missing or unexpected:
            raise ArtifactError(
                f"{checkpoint}: weights do not match this student "
                f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
            )
        return tensors

    flops = model_config.flops_per_token(tc.ctx, training=True)
    if teacher is not None:  # the teacher runs forward only (2N per token)
        flops += teacher.config.flops_per_token(tc.ctx, training=False)
    return TrainTask(
        name="distill",
        model=student,
        batches=batches,
        loss=loss,
        to_device=batch_to_device,
        tokens_per_batch=tc.batch_size * tc.ctx,
        roles=roles_by_structure(student, heads=[student.lm_head]),
        save=save,
        load=load,
        evaluate=data.evaluate,
        finish=finish,
        flops_per_token=flops,
        describe={
            "model": model_config.to_dict(),
            **describe_shape(model_config, tc.ctx),
            **summary_extra,
            "data": data.report,
        },
    )


def batch_to_device(batch: Any, device: torch.device) -> Any:
    """A host batch's arrays as tensors on the device (an on-policy request passes as is)."""
    if isinstance(batch, SampleRequest):
        return batch
    return arrays_to_device(batch, device)


def distill(
    student: str,
    out: str | Path,
    config: DistillConfig | None = None,
    *,
    teacher_dir: str | Path | None = None,
    tokens_dir: str | Path | None = None,
    data_files: Sequence[str] = (),
    val_files: Sequence[str] = (),
    cache_dir: str | Path | None = None,
    resume: bool = False,
    command: Sequence[str] | None = None,
    now: Callable[[], float] | None = None,
) -> RunResult:
    """Distill a teacher (live, or its cache) into `student` in the run directory `out`; its
    `model/` is the student (a model artifact, or an adapter on the student with LoRA)."""
    config = config or DistillConfig()
    factory = distill_factory(
        student, config, teacher_dir=teacher_dir, tokens_dir=tokens_dir, data_files=data_files,
        val_files=val_files, cache_dir=cache_dir, command=command,
    )  # fmt: skip
    return train(factory, config.train, out, resume=resume, command=command, now=now)
