"""A teacher and a student for language-model distillation: opened, checked against each
other, and the one vocabulary rule.

Distillation feeds both models the same token ids and compares their next-token
distributions, so they need the same tokenizer (its fingerprint); a student with another
tokenizer is refused, pointing at black-box distillation (`pocketlm synth` writes text a
student of any tokenizer trains on). Vocabularies: the comparison runs over the student's
vocabulary; a teacher padded with extra rows beyond it (vocabularies rounded up for speed) is
trimmed to it, and a student with more rows than its teacher is refused (the teacher gives
those rows no distribution to match). A PRESET student is built fresh with the teacher's
tokenizer: its vocabulary is the tokenizer's size and its context the teacher's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pocketlm.checkpoint.layout import CARRIED_FILES
from pocketlm.checkpoint.model_check import CheckedModel, check_model_dir
from pocketlm.common.errors import ConfigError
from pocketlm.interop.open_model import model_dir as resolve_model
from pocketlm.model.config import ModelConfig
from pocketlm.model.presets import PRESETS, preset_config
from pocketlm.tokenizer.tokenizer import TOKENIZER_FILES, Tokenizer

SYNTH_HINT = (
    "distillation compares the two models' next-token distributions over the same token ids; "
    "for a student with another tokenizer, distill in black-box mode instead: `pocketlm synth` "
    "writes the teacher's replies as text (and its top log-probabilities), and `pocketlm "
    "distill --data SYNTH` (or `pocketlm finetune`) trains any student on them"
)


def open_language_model(path: str | Path, what: str) -> CheckedModel:
    """The checked model artifact of `path` (an artifact, a run, or an HF folder, imported);
    ConfigError for a classifier or an encoder (no next-token distribution)."""
    checked = check_model_dir(resolve_model(path))
    if not checked.config.has_lm_head:
        raise ConfigError(
            f"the {what} {checked.directory} is a classifier or an encoder: it has no next-token "
            "distribution to distill (for classifiers: pocketlm classify distill)"
        )
    return checked


def check_same_tokenizer(teacher: Tokenizer, student: Tokenizer, where: str) -> None:
    """ConfigError unless `student` (read from `where`) is the teacher's tokenizer."""
    if student.fingerprint != teacher.fingerprint:
        raise ConfigError(
            f"{where} has another tokenizer than the teacher ({student.vocab_size} tokens, "
            f"fingerprint {student.fingerprint} vs {teacher.vocab_size} tokens, fingerprint "
            f"{teacher.fingerprint}): {SYNTH_HINT}"
        )


def check_vocab(teacher_vocab: int, student_vocab: int, student: str) -> None:
    """ConfigError when the student has rows its teacher lacks (a padded teacher is fine: its
    logits are trimmed to the student's vocabulary)."""
    if student_vocab > teacher_vocab:
        raise ConfigError(
            f"the student {student} has {student_vocab} vocabulary rows but the teacher only "
            f"{teacher_vocab}: the teacher gives the extra rows no probability to match; use a "
            "student with the teacher's vocabulary (a PRESET student gets it)"
        )


def is_preset(student: str) -> bool:
    """Whether --student names a preset (and no such directory exists)."""
    return student in PRESETS and not Path(student).exists()


def preset_student_config(preset: str, tokenizer: Tokenizer, max_seq_len: int) -> ModelConfig:
    """A fresh student's shape: the preset, the tokenizer's vocabulary, the teacher's context."""
    return preset_config(preset, vocab_size=tokenizer.vocab_size, max_seq_len=max_seq_len)


@dataclass(frozen=True)
class StudentSource:
    """Where a student comes from: a model directory (checked) or a preset's fresh config."""

    label: str  # for messages and manifests
    checked: CheckedModel | None  # a model directory
    config: ModelConfig  # its config (or the preset's)


def resolve_student(
    student: str, tokenizer: Tokenizer, teacher_vocab: int | None, max_seq_len: int
) -> StudentSource:
    """The student `student` (a directory or a preset) for a teacher with `tokenizer` and
    `teacher_vocab` rows (None: a cache, which covers the tokenizer's ids): its tokenizer and
    vocabulary checked."""
    if is_preset(student):
        config = preset_student_config(student, tokenizer, max_seq_len)
        return StudentSource(f"preset {student}", None, config)
    checked = open_language_model(student, "student")
    if checked.quant["scheme"] != "none":
        raise ConfigError(
            f"the student {checked.directory} is quantized ({checked.quant['scheme']}): its "
            "integer weights cannot train; give its float model (or train a LoRA adapter over "
            "the float model with --lora-rank)"
        )
    check_same_tokenizer(tokenizer, checked.tokenizer, f"the student {checked.directory}")
    if teacher_vocab is not None:
        check_vocab(teacher_vocab, checked.config.vocab_size, str(checked.directory))
    return StudentSource(str(checked.directory), checked, checked.config)


@torch.no_grad()
def teacher_logits(
    teacher: nn.Module,
    input_ids: torch.Tensor,
    vocab: int,
    *,
    positions: torch.Tensor | None = None,
    doc_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """The teacher's logits (B, T, vocab) on input_ids (B, T), trimmed to the first `vocab`
    rows (a padded teacher's extra rows dropped); no gradient."""
    logits = teacher(input_ids, positions=positions, doc_ids=doc_ids)  # (B, T, V_teacher)
    return logits[..., :vocab]


def tokenizer_files(model_dir: Path) -> list[Path]:
    """The tokenizer files (and carried chat template, generation defaults) of a model dir."""
    names = (*TOKENIZER_FILES, *CARRIED_FILES)
    return [model_dir / n for n in names if (model_dir / n).is_file()]
