"""Per-item task scores and their means with standard errors, as lm-evaluation-harness defines them.

Multiple choice (lm-eval's `multiple_choice` output type): `acc` = the choice with the highest
log-likelihood is the right one; `acc_norm` = the same with each log-likelihood divided by its
choice's length in characters (len(choice), without the delimiter before it); `acc_bytes` = divided
by its length in UTF-8 bytes. Ties go to the first choice (np.argmax). Generation: `exact_match`
(the output, stripped, equals an answer, stripped), `contains` (an answer, stripped, occurs in
the output) and `regex` (the item's pattern is found in the output). A metric's standard error
is lm-eval's: the sample standard deviation over items / sqrt(items) (None below two items).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

import numpy as np

from pocketlm.evals.task_files import GenerateItem

PRIMARY = {"choice": "acc", "generate": "exact_match", "classify": "acc"}


def choice_metrics(
    loglikelihoods: Sequence[float], choices: Sequence[str], gold: int
) -> dict[str, float]:
    """acc, acc_norm and acc_bytes of one multiple-choice item."""
    lls = np.asarray(loglikelihoods, dtype=np.float64)  # (n_choices,)
    chars = np.array([float(len(c)) for c in choices])  # (n_choices,)
    nbytes = np.array([float(len(c.encode("utf-8"))) for c in choices])  # (n_choices,)
    return {
        "acc": float(int(np.argmax(lls)) == gold),
        "acc_norm": float(int(np.argmax(lls / chars)) == gold),
        "acc_bytes": float(int(np.argmax(lls / nbytes)) == gold),
    }


def generation_metrics(output: str, item: GenerateItem) -> dict[str, float]:
    """exact_match and contains (and regex, when the item has a pattern) of one output."""
    got = output.strip()
    answers = [a.strip() for a in item.answers]
    scores = {
        "exact_match": float(any(got == a for a in answers)),
        "contains": float(any(a in output for a in answers)),
    }
    if item.regex is not None:
        scores["regex"] = float(re.search(item.regex, output) is not None)
    return scores


def stderr_of_mean(values: Sequence[float]) -> float | None:
    """Sample standard deviation / sqrt(n), as lm-eval's mean_stderr; None below two values."""
    n = len(values)
    if n < 2:
        return None
    mean = math.fsum(values) / n
    var = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    return math.sqrt(var) / math.sqrt(n)


def aggregate(per_item: Sequence[Mapping[str, float]]) -> dict[str, dict[str, float | None]]:
    """{metric: {"value": mean, "stderr": stderr_of_mean}} over items (metrics some items lack
    are averaged over the items that have them)."""
    names: dict[str, None] = {}
    for scores in per_item:
        names.update(dict.fromkeys(scores))
    out: dict[str, dict[str, float | None]] = {}
    for name in names:
        values = [float(s[name]) for s in per_item if name in s]
        out[name] = {"value": math.fsum(values) / len(values), "stderr": stderr_of_mean(values)}
    return out


def primary_metric(kind: str, metrics: Mapping[str, object]) -> str:
    """The metric a task is judged by: regex when its items have patterns, else PRIMARY[kind]."""
    if kind == "generate" and "regex" in metrics:
        return "regex"
    return PRIMARY[kind]
