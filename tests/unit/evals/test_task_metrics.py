"""acc / acc_norm / acc_bytes as lm-evaluation-harness defines them, generation matches, and
lm-eval's standard error of the mean."""

from __future__ import annotations

import math

import pytest

from pocketlm.evals.task_files import GenerateItem
from pocketlm.evals.task_metrics import (
    aggregate,
    choice_metrics,
    generation_metrics,
    stderr_of_mean,
)


def test_acc_norm_divides_by_characters_and_acc_bytes_by_utf8_bytes():
    # raw: choice 0 wins; per character: choice 1 (-3/4 > -2/2); per byte: choice 0 again
    # ("é" is 2 bytes: -2/4 > -3/4)
    scores = choice_metrics([-2.0, -3.0], ["éé", "abcd"], gold=1)
    assert scores == {"acc": 0.0, "acc_norm": 1.0, "acc_bytes": 0.0}
    assert choice_metrics([-1.0, -1.0, -3.0], ["a", "b", "c"], gold=0)["acc"] == 1.0  # tie: first
    assert choice_metrics([-1.0, -1.0, -3.0], ["a", "b", "c"], gold=1)["acc"] == 0.0


def test_generation_metrics():
    item = GenerateItem("Q", ("Paris", "paris, France"), (), r"\bParis\b", "f:1")
    assert generation_metrics("  Paris\n", item) == {
        "exact_match": 1.0,
        "contains": 1.0,
        "regex": 1.0,
    }
    assert generation_metrics("It is Paris.", item) == {
        "exact_match": 0.0,
        "contains": 1.0,
        "regex": 1.0,
    }
    plain = GenerateItem("Q", ("4",), (), None, "f:2")
    assert generation_metrics("5", plain) == {"exact_match": 0.0, "contains": 0.0}


def test_stderr_is_lm_evals_mean_stderr():
    values = [1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0]
    n, mean = len(values), sum(values) / len(values)
    expected = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) / math.sqrt(n)
    assert stderr_of_mean(values) == pytest.approx(expected)
    assert stderr_of_mean([1.0]) is None
    metrics = pytest.importorskip("lm_eval.api.metrics")
    assert stderr_of_mean(values) == pytest.approx(metrics.mean_stderr(values))
    table = aggregate(
        [{"acc": v, "regex": v} if i % 2 else {"acc": v} for i, v in enumerate(values)]
    )
    assert table["acc"]["value"] == pytest.approx(mean)
    assert table["regex"]["value"] == pytest.approx(sum(values[1::2]) / 3)
