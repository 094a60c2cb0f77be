"""DistilBERT-style distillation of a classifier into a smaller student through the one training loop.

`distill_classify_task_factory(teacher_dir, train, val, settings)` takes a classifier (an encoder
or a decoder, PocketLM's or an imported HF folder) and labelled token sequences (the teacher's
tokenizer, the teacher's labels) and returns the TaskFactory the loop calls. The student is by
default the teacher's every second layer (model/layer_select: layers 0, 2, 4, ... renumbered,
with the embeddings, final norm and head copied), or the layers settings.student_layers names,
or a classifier model directory of its own (student_dir: the same labels and tokenizer).

Per example, with the teacher run under no_grad in eval mode on the same batch (inside the
run's autocast, as the student):

    loss = alpha_soft * distill_loss(student logits, teacher logits, kind, T)   (T² KL by default)
         + alpha_hard * cross-entropy(student logits, label)
         + alpha_cos  * mean over the example's real tokens of 1 - cos(student h, teacher h)

h being each model's final hidden states (what its head pools from; read by a forward hook on
the final norm, so nothing of the forward is duplicated). The cosine term needs a student as
wide as its teacher: with another width it is off, and the run's description says so. The loop
divides the summed loss by the example count: every example weighs the same in every term.

Evaluation: the student's validation loss and accuracy (classify.held_out_metrics); the
teacher's, measured once at the end, join the final model's summary (teacher_val_accuracy,
teacher_val_loss). The final model is an ordinary classifier artifact whose manifest names the
teacher as a parent.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pocketlm.checkpoint.model_check import CheckedModel, check_model_dir
from pocketlm.checkpoint.model_io import load_model, save_model_state
from pocketlm.common.config import to_dict
from pocketlm.common.errors import ConfigError, InputError
from pocketlm.common.log import get_logger
from pocketlm.common.manifest import parent_ref
from pocketlm.data.classify_loader import ClassifyBatches, LabelledTokens, eval_batches
from pocketlm.interop.open_model import model_dir as resolve_model
from pocketlm.model.classifier import head_parameter_modules
from pocketlm.model.final_hidden import FinalHidden
from pocketlm.model.layer_select import every_other_layer, select_layers
from pocketlm.train.config import TrainConfig
from pocketlm.train.distill_loss import KINDS, distill_loss, hidden_cosine_loss
from pocketlm.train.loop import RunResult, train
from pocketlm.train.roles import roles_by_structure
from pocketlm.train.task import (
    RunContext,
    SaveRequest,
    TaskFactory,
    TrainTask,
    arrays_to_device,
)
from pocketlm.train.tasks.classify import (
    checkpoint_tensors,
    classify_train_defaults,
    held_out_metrics,
    prepare_examples,
)

EVERY_OTHER = "every_other"

_log = get_logger("pocketlm.train.distill_classify")


@dataclass(frozen=True)
class DistillClassifyConfig:
    """Distillation settings: the temperature, the weights of the soft-target loss (of `kind`,
    train/distill_loss.KINDS), of the hard-label cross-entropy and of the hidden-state cosine
    (only when the student is as wide as the teacher), the student's teacher layers ("every_other"
    or their indices), the loop's settings (train.ctx: examples are cut to their first ctx
    tokens) and how many validation examples each evaluation reads (0: all)."""

    temperature: float = 2.0
    alpha_soft: float = 0.5
    alpha_hard: float = 0.5
    alpha_cos: float = 0.1
    kind: str = "forward_kl"
    student_layers: tuple[int, ...] | str = EVERY_OTHER
    train: TrainConfig = field(default_factory=classify_train_defaults)
    eval_examples: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"distill kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ConfigError(f"temperature must be finite and > 0, got {self.temperature}")
        weights = (self.alpha_soft, self.alpha_hard, self.alpha_cos)
        if any(not (math.isfinite(w) and w >= 0) for w in weights) or not any(weights):
            raise ConfigError(
                "alpha_soft, alpha_hard and alpha_cos must be finite and >= 0, and one of them "
                f"> 0; got {weights}"
            )
        if isinstance(self.student_layers, str):
            if self.student_layers != EVERY_OTHER:
                raise ConfigError(
                    f"student_layers must be {EVERY_OTHER!r} or teacher layer indices "
                    f"(e.g. 0,3,5), got {self.student_layers!r}"
                )
        elif not self.student_layers:
            raise ConfigError("student_layers names no layer: give teacher layer indices")
        if self.eval_examples < 0:
            raise ConfigError(f"eval_examples must be >= 0, got {self.eval_examples}")


def example_losses(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    settings: DistillClassifyConfig,
    hidden: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Per-example distillation loss (B,) from class logits (B, n_labels) and labels (B,);
    hidden = (student states (B, T, dim), teacher states (B, T, dim), attention mask (B, T))
    adds the cosine term, averaged over each example's real tokens."""
    loss = settings.alpha_hard * F.cross_entropy(student_logits.float(), labels, reduction="none")
    if settings.alpha_soft:
        soft = distill_loss(
            student_logits, teacher_logits, settings.kind, temperature=settings.temperature
        )  # (B,)
        loss = loss + settings.alpha_soft * soft
    if hidden is not None:
        student_h, teacher_h, mask = hidden
        real = mask.to(torch.float32)  # (B, T)
        cos = hidden_cosine_loss(student_h, teacher_h)  # (B, T)
        loss = loss + settings.alpha_cos * (cos * real).sum(dim=1) / real.sum(dim=1)
    return loss


def distill_classify_task_factory(
    teacher_dir: str | Path,
    train_data: LabelledTokens,
    val_data: LabelledTokens | None,
    settings: DistillClassifyConfig,
    *,
    student_dir: str | Path | None = None,
    pad_id: int | None = None,
    parents: Sequence[dict] = (),
    data_report: dict[str, Any] | None = None,
    command: Sequence[str] | None = None,
) -> TaskFactory:
    """The task factory distilling the classifier `teacher_dir` into a student (its every second
    layer, the layers settings.student_layers names, or the classifier `student_dir`) on
    labelled token sequences (label ids in the teacher's label order), validated on `val_data`.

    pad_id: the id padding fills in (default: the tokenizer's pad, else eos, else 0; the mask
    decides). parents / data_report: the data files' manifest references and the data module's
    report, carried into the artifacts' manifests.
    """
    teacher_base = resolve_model(teacher_dir)
    teacher_checked = check_model_dir(teacher_base)
    labels = teacher_checked.config.labels
    if not labels:
        raise ConfigError(
            f"{teacher_base} is a language model, not a classifier: train it as one first "
            "(pocketlm classify train), then distill the classifier"
        )
    student_base = None if student_dir is None else resolve_model(student_dir)
    student_checked = _check_student(teacher_checked, student_base, settings)
    keep = _student_layers(teacher_checked, settings) if student_base is None else None
    # a student made of teacher layers has the teacher's width and context
    student_config = (student_checked or teacher_checked).config
    tc = settings.train
    for what, config in (("teacher", teacher_checked.config), ("student", student_config)):
        if tc.ctx > config.max_seq_len:
            raise ConfigError(f"ctx {tc.ctx} exceeds the {what}'s context {config.max_seq_len}")
    tokenizer = teacher_checked.tokenizer
    pad = next((i for i in (pad_id, tokenizer.pad_id, tokenizer.eos_id) if i is not None), 0)
    train_data, val_data, report = prepare_examples(
        train_data, val_data, labels, tc.ctx, settings.eval_examples, pad
    )
    report = {**(data_report or {}), **report}
    mean_len = max(1, round(report["mean_tokens"]))
    use_cosine = bool(settings.alpha_cos) and student_config.dim == teacher_checked.config.dim
    cosine = _cosine_note(settings, student_config.dim, teacher_checked.config.dim)
    if settings.alpha_cos and not use_cosine:
        _log.warning("%s", cosine)
    tokenizer_dir = student_base or teacher_base
    all_parents = [parent_ref(teacher_base)]
    if student_base is not None:
        all_parents.append(parent_ref(student_base))
    all_parents.extend(parents)
    summary_extra = {
        "labels": list(labels),
        "teacher": str(teacher_base),
        "student": str(student_base) if student_base else f"teacher layers {keep}",
        "teacher_params": teacher_checked.config.num_params(),
        "cosine": cosine,
        "classify_data": report,
    }

    def factory(ctx: RunContext) -> TrainTask:
        teacher = load_model(teacher_base, dtype=torch.float32).model
        if student_base is None:
            student = select_layers(teacher, keep)  # type: ignore[arg-type]
        else:
            student = load_model(student_base, dtype=torch.float32).model
        student.train()
        teacher = teacher.to(ctx.device).eval().requires_grad_(False)
        config = student.config
        s_hook, t_hook = (FinalHidden(student), FinalHidden(teacher)) if use_cosine else (None,) * 2
        batches = ClassifyBatches(
            train_data, tc.batch_size, pad_id=pad, seed=tc.seed,
            rank=ctx.dist.rank, world_size=ctx.dist.world_size,
        )  # fmt: skip
        held_out = eval_batches(val_data, tc.batch_size, pad) if val_data else []

        def loss(m: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
            ids, mask = batch["input_ids"], batch["attention_mask"]
            with torch.no_grad():
                t_logits, t_hidden = _forward(teacher, ids, mask, t_hook)
            s_logits, s_hidden = _forward(m, ids, mask, s_hook)
            hidden = (s_hidden, t_hidden, mask) if use_cosine else None
            per_example = example_losses(s_logits, t_logits, batch["labels"], settings, hidden)
            return per_example.sum(), ids.shape[0]

        def evaluate(m: nn.Module, run_ctx: RunContext) -> dict[str, float]:
            return held_out_metrics(m, held_out, run_ctx.device, run_ctx.autocast())

        def finish(m: nn.Module, run_ctx: RunContext) -> dict[str, float]:
            if not held_out:
                return {}
            measured = held_out_metrics(teacher, held_out, run_ctx.device, run_ctx.autocast())
            return {"teacher_val_accuracy": measured["val_accuracy"],
                    "teacher_val_loss": measured["val_loss"]}  # fmt: skip

        def save(request: SaveRequest) -> Path:
            return save_model_state(
                request.out, request.state, config, tokenizer_dir, parents=all_parents,
                config={"task": "distill_classify", "teacher": str(teacher_base),
                        **to_dict(settings)},
                summary={**request.summary, **summary_extra},
                command=command, overwrite=request.overwrite, extra=request.add_files,
            )  # fmt: skip

        # The student trains (6N per token); the teacher runs forward only (2N).
        flops = config.flops_per_token(mean_len, training=True)
        flops += teacher.config.flops_per_token(mean_len, training=False)
        return TrainTask(
            name="distill_classify",
            model=student,
            batches=batches,
            loss=loss,
            to_device=arrays_to_device,
            tokens_per_batch=max(1, round(tc.batch_size * report["mean_tokens"])),
            roles=roles_by_structure(student, heads=head_parameter_modules(student)),
            save=save,
            load=lambda checkpoint: checkpoint_tensors(checkpoint, student),
            evaluate=evaluate if held_out else None,
            finish=finish,
            flops_per_token=flops,
            describe={
                "model": config.to_dict(),
                "teacher": str(teacher_base),
                "student": summary_extra["student"],
                "labels": list(labels),
                "cosine": cosine,
                "data": report,
            },
        )

    return factory


def _forward(
    model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, hook: FinalHidden | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(class logits (B, n_labels), final hidden states (B, T, dim) when hooked, else None)."""
    if hook is None:
        return model(ids, attention_mask=mask), None
    return hook.run(lambda: model(ids, attention_mask=mask))


def _check_student(
    teacher: CheckedModel, student_base: Path | None, settings: DistillClassifyConfig
) -> CheckedModel | None:
    """The checked student directory (None: the student is made from the teacher's layers);
    ConfigError unless it classifies the teacher's labels with the teacher's tokenizer."""
    if student_base is None:
        return None
    if settings.student_layers != EVERY_OTHER:
        raise ConfigError(
            "student_layers picks teacher layers for a student made from the teacher; "
            f"with a student model ({student_base}) leave it at {EVERY_OTHER!r}"
        )
    student = check_model_dir(student_base)
    if student.quant["scheme"] != "none":
        raise ConfigError(
            f"the student {student_base} is quantized ({student.quant['scheme']}): its integer "
            "weights cannot train; give its float model"
        )
    if student.config.labels != teacher.config.labels:
        raise ConfigError(
            f"the student {student_base} classifies {list(student.config.labels)} but the "
            f"teacher {teacher.directory} classifies {list(teacher.config.labels)}: a student "
            "needs the teacher's labels in the teacher's order (pocketlm classify train it "
            "with them first)"
        )
    mine, theirs = student.tokenizer, teacher.tokenizer
    if mine.fingerprint != theirs.fingerprint:
        raise ConfigError(
            f"the student {student_base} and the teacher {teacher.directory} have different "
            f"tokenizers ({mine.vocab_size} tokens, fingerprint {mine.fingerprint} vs "
            f"{theirs.vocab_size} tokens, fingerprint {theirs.fingerprint}): distillation feeds "
            "both the same token ids, so the student needs the teacher's tokenizer"
        )
    return student


def _student_layers(teacher: CheckedModel, settings: DistillClassifyConfig) -> list[int]:
    """The teacher layers the student is made of; ConfigError for indices out of range, or a
    quantized teacher (its integer weights cannot start a trained student)."""
    n = teacher.config.n_layers
    if teacher.quant["scheme"] != "none":
        raise ConfigError(
            f"{teacher.directory} is quantized ({teacher.quant['scheme']}): a student cannot "
            "start from its integer weights; distill the float classifier, or give a student model"
        )
    if settings.student_layers == EVERY_OTHER:
        return every_other_layer(n)
    keep = [int(i) for i in settings.student_layers]
    if any(not 0 <= i < n for i in keep) or len(set(keep)) < len(keep):
        raise ConfigError(
            f"student_layers must be distinct teacher layers in 0..{n - 1}, got {keep}"
        )
    return keep


def _cosine_note(settings: DistillClassifyConfig, student_dim: int, teacher_dim: int) -> str:
    """What the run does with the hidden-state cosine term, in words (for reports)."""
    if not settings.alpha_cos:
        return "off (alpha_cos 0)"
    if student_dim != teacher_dim:
        return (
            f"off: the student's width {student_dim} differs from the teacher's {teacher_dim} "
            "(the hidden-state cosine needs equal widths)"
        )
    return f"on (alpha_cos {settings.alpha_cos})"


def teacher_labels(teacher_dir: str | Path) -> tuple[str, ...]:
    """The labels (in logit order) of the classifier `teacher_dir`; ConfigError for a language
    model. What the data's label ids index when distilling it."""
    base = resolve_model(teacher_dir)
    labels = check_model_dir(base).config.labels
    if not labels:
        raise ConfigError(f"{base} is a language model, not a classifier: nothing to distill")
    return labels


def distill_classifier(
    teacher_dir: str | Path,
    train_data: LabelledTokens,
    val_data: LabelledTokens | None,
    out: str | Path,
    settings: DistillClassifyConfig | None = None,
    *,
    student_dir: str | Path | None = None,
    pad_id: int | None = None,
    parents: Sequence[dict] = (),
    data_report: dict[str, Any] | None = None,
    resume: bool = False,
    command: Sequence[str] | None = None,
    now: Callable[[], float] | None = None,
) -> RunResult:
    """Distill the classifier `teacher_dir` into a smaller student (see the module docstring)
    in the run directory `out`; its `model/` is the student, an ordinary classifier artifact."""
    settings = settings or DistillClassifyConfig()
    if not len(train_data):
        raise InputError("no training examples")
    factory = distill_classify_task_factory(
        teacher_dir, train_data, val_data, settings, student_dir=student_dir, pad_id=pad_id,
        parents=parents, data_report=data_report, command=command,
    )  # fmt: skip
    return train(factory, settings.train, out, resume=resume, command=command, now=now)
