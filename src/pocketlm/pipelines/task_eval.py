"""`pocketlm eval --task`: a model scored on task files, one report (JSON, markdown, an artifact).

Opens the model once through engine.load.open_backend (any backend and any model directory the
engine runs: fp32, bf16, int8/int4 quantized, a base + LoRA adapter), or engine.classify for a
classifier, and scores every task with evals/task_run: multiple choice and a language model's
labels by log-likelihood on the backend (shared prefix), generation greedily through the
engine's batching scheduler (its slots decode together), a classifier's labels by its batched
predict.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pocketlm.common.errors import ConfigError, PocketLMError
from pocketlm.common.manifest import ArtifactWriter, parent_ref
from pocketlm.common.progress import progress_bar
from pocketlm.evals.task_files import Task, read_task
from pocketlm.evals.task_report import item_records, report_markdown, task_summary
from pocketlm.evals.task_run import (
    ItemResult,
    item_indices,
    score_choice_task,
    score_classifier_task,
    score_generate_task,
)

KIND = "task-eval"
ITEMS_FILE = "items.jsonl"  # every item's outcome, one JSON line each (evals/task_parity reads)
SLOTS = 8  # prompts a generation task decodes together; items a multiple-choice batch scores
SCORE_REWIND = 256  # tokens a continuation may take (native sliding-window caches keep them)


@dataclass(frozen=True)
class TaskEvalSettings:
    """How tasks are run: examples before each item, their seed, items per task, the engine."""

    shots: int = 0
    seed: int = 1234
    limit: int | None = None
    task_type: str = "auto"
    max_new_tokens: int = 64
    backend: str = "auto"
    device: str = "auto"
    precision: str = "auto"
    threads: int = 0

    def __post_init__(self) -> None:
        if self.shots < 0:
            raise ConfigError(f"--shots must be >= 0, got {self.shots}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit must be >= 1, got {self.limit}")
        if self.max_new_tokens < 1:
            raise ConfigError(f"--max-new-tokens must be >= 1, got {self.max_new_tokens}")


def evaluate_tasks(
    model: str | Path,
    task_files: Sequence[str | Path],
    settings: TaskEvalSettings = TaskEvalSettings(),
    *,
    adapter: str | Path | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
    command: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The report of `model` on the task files, with every item's outcome under "items"; also
    written to `out` (report.json, report.md, items.jsonl) as a task-eval artifact when given."""
    from pocketlm.engine.load import classifier_labels

    tasks = [read_task(f, settings.task_type) for f in task_files]  # bad files fail first
    names = _unique_names(tasks)
    writer = contextlib.nullcontext(None)
    if out is not None:  # opened first: an occupied --out fails before the scoring
        writer = ArtifactWriter(
            out,
            KIND,
            config={**settings.__dict__, "tasks": [t.path for t in tasks]},
            parents=[parent_ref(t.path) for t in tasks],
            command=command,
            overwrite=overwrite,
        )
    with writer as art:  # a failure on the way leaves no half-written artifact
        start = time.perf_counter()
        labels = classifier_labels(model)
        if labels:
            results, backend_name = _run_classifier(model, tasks, settings, adapter, labels)
        else:
            results, backend_name = _run_language_model(model, tasks, settings, adapter)
        summaries = zip(names, tasks, results, strict=True)
        report = {
            "model": str(model),
            "adapter": None if adapter is None else str(adapter),
            "backend": backend_name,
            "shots": settings.shots,
            "seed": settings.seed,
            "limit": settings.limit,
            "seconds": time.perf_counter() - start,
            "tasks": {n: task_summary(t, r) for n, t, r in summaries},
        }
        items = {n: item_records(r) for n, r in zip(names, results, strict=True)}
        if art is not None:
            art.path("report.json").write_text(json.dumps(report, indent=2) + "\n", "utf-8")
            art.path("report.md").write_text(report_markdown(report), "utf-8")
            with art.path(ITEMS_FILE).open("w", encoding="utf-8") as fh:
                for name, records in items.items():
                    for record in records:
                        fh.write(json.dumps({"task": name, **record}) + "\n")
            primary = {n: t["metrics"][t["primary"]]["value"] for n, t in report["tasks"].items()}
            report["out"] = str(art.commit({"primary": primary}))
    report["items"] = items  # not in report.json: items.jsonl holds them
    return report


def scoring_slots(model: str | Path) -> int:
    """Sequences to open a model with for scoring and generation: SLOTS, or 1 for a GGUF file
    (llama.cpp's backend holds one)."""
    from pocketlm.engine.exported import GGUF, exported_format

    return 1 if exported_format(model) == GGUF else SLOTS


def _unique_names(tasks: Sequence[Task]) -> list[str]:
    """Each task's name (its file's stem), numbered where two files share one."""
    names: list[str] = []
    for task in tasks:
        name, n = task.name, 2
        while name in names:
            name, n = f"{task.name}-{n}", n + 1
        names.append(name)
    return names


def _total(tasks: Sequence[Task], limit: int | None) -> int:
    return sum(len(item_indices(t, limit)) for t in tasks)


def _run_language_model(
    model: str | Path, tasks: Sequence[Task], settings: TaskEvalSettings, adapter
) -> tuple[list[list[ItemResult]], str]:
    from pocketlm.engine.load import open_backend

    # a classify task on a language model: the label words scored as choices
    backend, tokenizer = open_backend(
        model,
        slots=scoring_slots(model),
        backend=settings.backend,
        device=settings.device,
        precision=settings.precision,
        threads=settings.threads,
        rewind=SCORE_REWIND,
        adapter=adapter,
    )
    common = dict(shots=settings.shots, seed=settings.seed, limit=settings.limit)
    results = []
    with progress_bar(_total(tasks, settings.limit), desc="eval", unit="item") as bar:
        for task in tasks:
            bar.set_description(f"eval {task.name}")
            if task.kind == "generate":
                generate = greedy_generator(backend, tokenizer, settings.max_new_tokens)
                results.append(score_generate_task(task, generate, progress=bar.update, **common))
            else:
                results.append(
                    score_choice_task(task, backend, tokenizer, progress=bar.update, **common)
                )
    return results, backend.name


def _run_classifier(
    model: str | Path,
    tasks: Sequence[Task],
    settings: TaskEvalSettings,
    adapter,
    labels: tuple[str, ...],
) -> tuple[list[list[ItemResult]], str]:
    from pocketlm.engine.classify import open_classifier

    wrong = [t.path for t in tasks if t.kind != "classify"]
    if wrong:
        raise ConfigError(
            f"{model} is a classifier over {list(labels)}: it scores text/label tasks only, "
            f"not {', '.join(wrong)}"
        )
    for task in tasks:
        unknown = [label for label in task.labels if label not in labels]
        if unknown:
            raise ConfigError(
                f"{task.path}: labels {unknown} are not among the classifier's {list(labels)}"
            )
    from pocketlm.engine.exported import ONNX, exported_format

    runtime = "onnx" if exported_format(model) == ONNX else "torch"
    if settings.backend not in ("auto", runtime):
        raise ConfigError(
            f"this classifier runs on the {runtime} backend, not --backend {settings.backend}"
        )
    classifier = open_classifier(
        model,
        adapter=adapter,
        device=settings.device,
        precision=settings.precision,
        threads=settings.threads,
    )

    def predict(texts: Sequence[str]) -> list[str]:
        return [p.label for p in classifier.predict(texts)]

    results = []
    with progress_bar(_total(tasks, settings.limit), desc="eval", unit="item") as bar:
        for task in tasks:
            results.append(
                score_classifier_task(task, predict, limit=settings.limit, progress=bar.update)
            )
    return results, runtime


def greedy_generator(backend, tokenizer, max_new_tokens: int):
    """A generate(prompts, stops) function: greedy outputs of the engine's batching scheduler
    over the backend's slots (each prompt cut from the left to leave room for the answer)."""
    from pocketlm.engine.sampling import SamplingParams
    from pocketlm.engine.scheduler import BatchScheduler

    def generate(prompts: Sequence[str], stops: Sequence[tuple[str, ...]]) -> list[str]:
        scheduler = BatchScheduler(backend, tokenizer, max_queue=len(prompts)).start()
        try:
            room = max(1, backend.context_length - max_new_tokens)
            head = [tokenizer.bos_id] if tokenizer.add_bos else []
            specs = []
            for prompt, stop in zip(prompts, stops, strict=True):
                ids = [*head, *tokenizer.encode(prompt)][-room:]
                params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0, stop=stop)
                specs.append((ids, params, None, None))
            requests = scheduler.submit_many(specs)
            outputs = []
            for request in requests:
                texts = []
                for event in request.events():
                    if event.error is not None:
                        raise PocketLMError(event.error)
                    texts.append(event.text)
                outputs.append("".join(texts))
            return outputs
        finally:
            scheduler.stop()

    return generate
