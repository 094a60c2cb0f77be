"""`pocketlm distill --student draft`: a speculative-decoding draft for a model, in one command.

The draft starts as the teacher cut to a quarter of its layers (`compress/prune`: the layers
that change the hidden state most on the calibration tokens, with the teacher's own embeddings
and head), is distilled from the teacher on the same tokens through the one training loop, and
is quantized to int4 for speed: `pocketlm generate --model TEACHER --draft OUT/draft-int4`.
A draft that was taught by its own target agrees with it far more often than a model trained
on its own does.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pocketlm.common.errors import ArtifactError, ConfigError
from pocketlm.common.manifest import read_manifest

DRAFT = re.compile(r"draft(?::(\d+))?")
INIT_DIR = "draft-init"
INT4_DIR = "draft-int4"


def draft_layers(student: str) -> int | None:
    """For a --student value: None when it is not `draft[:LAYERS]`, else LAYERS (0: auto)."""
    m = DRAFT.fullmatch(student.strip())
    if not m:
        return None
    return int(m.group(1)) if m.group(1) else 0


def auto_layers(teacher_layers: int) -> int:
    """The draft's depth when none is given: a quarter of the teacher's, at least one layer."""
    return max(1, teacher_layers // 4)


@dataclass(frozen=True)
class DraftResult:
    """The distillation run, its float draft and the int4 draft to decode with."""

    run: object  # train.run.RunResult
    model_dir: Path
    int4_dir: Path


def distill_draft(
    teacher_dir: str | Path,
    tokens_dir: str | Path | None,
    out: str | Path,
    config,
    *,
    layers: int = 0,
    resume: bool = False,
    command: Sequence[str] | None = None,
) -> DraftResult:
    """Prune the teacher to `layers` (0: a quarter), distill it from the teacher on
    `tokens_dir` in the run directory `out`, and write its int4 copy to out/draft-int4."""
    from pocketlm.checkpoint.model_check import check_model_dir
    from pocketlm.compress.prune import prune_model_dir
    from pocketlm.compress.quantize import quantize_model_dir
    from pocketlm.interop.open_model import model_dir
    from pocketlm.train.tasks.distill_lm import distill

    if tokens_dir is None:
        raise ConfigError(
            "--student draft cuts the teacher by importance on token windows: give --tokens DIR "
            "(token shards of the teacher's tokenizer)"
        )
    if config.lora.rank:
        raise ConfigError("a draft is trained whole: drop --lora-rank")
    out = Path(out)
    init = out / INIT_DIR
    teacher = check_model_dir(model_dir(teacher_dir))
    keep = layers or auto_layers(teacher.config.n_layers)
    if not _cut_from(init, teacher.directory, keep):  # a rerun reuses the same cut only
        teacher_layers = teacher.config.n_layers
        if keep >= teacher_layers:
            raise ConfigError(
                f"a draft of {keep} layers is not smaller than the teacher ({teacher_layers}): "
                f"use --student draft:N with N < {teacher_layers}"
            )
        prune_model_dir(teacher_dir, init, tokens_dir, layers=keep, command=command, overwrite=True)
    run = distill(
        str(init), out, config, teacher_dir=teacher_dir, tokens_dir=tokens_dir, resume=resume,
        command=command,
    )  # fmt: skip
    int4, _ = quantize_model_dir(run.model_dir, out / INT4_DIR, "int4", command=command,
                                 overwrite=True)  # fmt: skip
    return DraftResult(run, Path(run.model_dir), Path(int4))


def _cut_from(init: Path, teacher_dir: Path, layers: int) -> bool:
    """Whether `init` is already this teacher cut to `layers` layers (a finished cut)."""
    try:
        manifest = read_manifest(init, kind="model")
    except ArtifactError:
        return False
    parents = [Path(p["path"]).resolve() for p in manifest.get("parents", [])]
    config = json.loads((init / "model_config.json").read_text(encoding="utf-8"))
    return teacher_dir.resolve() in parents and config.get("n_layers") == layers
