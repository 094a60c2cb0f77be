"""Scoring a task's items: over a LogitsBackend (multiple choice, and a language model's labels),
a greedy `generate` function (generation) or a classifier's `predict` function (classification).

Nothing here opens a model: the caller (pipelines/task_eval.py, the lm-eval adapter) hands in the
backend or the functions, so every backend scores through the same code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pocketlm.evals.loglikelihood import LogitsBackend, encode_pairs, score_many
from pocketlm.evals.task_files import ClassifyItem, GenerateItem, Task
from pocketlm.evals.task_metrics import choice_metrics, generation_metrics
from pocketlm.evals.task_prompts import build_prompt, choice_texts
from pocketlm.tokenizer.tokenizer import Tokenizer

# generate(prompts, stops per prompt) -> the greedy output of each prompt
Generate = Callable[[Sequence[str], Sequence[tuple[str, ...]]], list[str]]
Predict = Callable[[Sequence[str]], list[str]]  # texts -> labels
Progress = Callable[[int], None]  # items just finished


@dataclass(frozen=True)
class ItemResult:
    """One item's scores, with what was expected and what the model gave (for the report)."""

    where: str
    scores: dict[str, float]
    expected: str
    got: str
    prompt: str
    loglikelihoods: tuple[float, ...] = field(default=())


def _none(_: int) -> None:
    return None


def item_indices(task: Task, limit: int | None) -> range:
    """The items scored: the first `limit` (all when None)."""
    return range(len(task.items) if limit is None else min(limit, len(task.items)))


def score_choice_task(
    task: Task,
    backend: LogitsBackend,
    tokenizer: Tokenizer,
    *,
    shots: int = 0,
    seed: int = 1234,
    limit: int | None = None,
    batch: int = 64,
    progress: Progress = _none,
) -> list[ItemResult]:
    """A multiple-choice task (or a classify task on a language model) by log-likelihood,
    `batch` items handed to the scorer at once (a backend with several slots scores them
    together: evals.loglikelihood.score_many)."""
    indices = list(item_indices(task, limit))
    results = []
    for first in range(0, len(indices), batch):
        chunk = indices[first : first + batch]
        prompts = [build_prompt(task, i, shots=shots, seed=seed) for i in chunk]
        requests = [encode_pairs(tokenizer, p.context, p.continuations) for p in prompts]
        for index, prompt, scored in zip(
            chunk, prompts, score_many(backend, requests), strict=True
        ):
            item = task.items[index]
            lls = tuple(s.loglikelihood for s in scored)
            choices = choice_texts(task, item)
            scores = choice_metrics(lls, choices, prompt.gold)
            best = max(range(len(lls)), key=lambda i: (lls[i], -i))
            results.append(
                ItemResult(
                    item.where, scores, choices[prompt.gold], choices[best], prompt.context, lls
                )
            )
        progress(len(chunk))
    return results


def score_generate_task(
    task: Task,
    generate: Generate,
    *,
    shots: int = 0,
    seed: int = 1234,
    limit: int | None = None,
    batch: int = 16,
    progress: Progress = _none,
) -> list[ItemResult]:
    """A generation task on greedy outputs, `batch` prompts per generate call."""
    indices = list(item_indices(task, limit))
    results = []
    for first in range(0, len(indices), batch):
        chunk = indices[first : first + batch]
        items: list[GenerateItem] = [task.items[i] for i in chunk]  # type: ignore[misc]
        prompts = [build_prompt(task, i, shots=shots, seed=seed).context for i in chunk]
        outputs = generate(prompts, [it.stop for it in items])
        for item, prompt, output in zip(items, prompts, outputs, strict=True):
            scores = generation_metrics(output, item)
            results.append(ItemResult(item.where, scores, item.answers[0], output, prompt))
        progress(len(chunk))
    return results


def score_classifier_task(
    task: Task,
    predict: Predict,
    *,
    limit: int | None = None,
    batch: int = 64,
    progress: Progress = _none,
) -> list[ItemResult]:
    """A classify task on a classifier's predicted labels."""
    indices = list(item_indices(task, limit))
    results = []
    for first in range(0, len(indices), batch):
        items: list[ClassifyItem] = [task.items[i] for i in indices[first : first + batch]]  # type: ignore[misc]
        labels = predict([it.text for it in items])
        for item, label in zip(items, labels, strict=True):
            scores = {"acc": float(label == item.label)}
            results.append(ItemResult(item.where, scores, item.label, label, item.text))
        progress(len(items))
    return results
