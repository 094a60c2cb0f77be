"""Parity of variants with the reference on hand-built measurements: greedy token agreement
until the first divergence, score differences, same-answer shares, the markdown table."""

from __future__ import annotations

import math

import pytest

from pocketlm.evals.artifact_parity import (
    common_prefix,
    greedy_agreement,
    mean_task_score,
    parity_lines,
    parity_report,
    task_scores,
    variant_parity,
)


def _items(answers, acc):
    return [
        {"where": f"t.jsonl:{i + 1}", "scores": {"acc": a}, "got": g}
        for i, (g, a) in enumerate(zip(answers, acc, strict=True))
    ]


def test_common_prefix_stops_at_the_first_difference():
    assert common_prefix([1, 2, 3], [1, 2, 3]) == 3
    assert common_prefix([1, 2, 3], [1, 9, 3]) == 1  # the later match does not count
    assert common_prefix([1, 2, 3], [1, 2]) == 2
    assert common_prefix([], [1]) == 0


def test_greedy_agreement_counts_tokens_until_divergence_and_whole_matches():
    reference = [[1, 2, 3, 4], [5, 6, 7, 8], [9, 9, 9, 9], [1, 1, 1, 1]]
    variant = [[1, 2, 3, 4], [5, 6, 0, 8], [0, 9, 9, 9], [1, 1]]
    got = greedy_agreement(reference, variant)
    assert got["prompts"] == 4 and got["tokens"] == 16
    assert got["until_divergence"] == pytest.approx((4 + 2 + 0 + 2) / 16)
    assert got["exact_match"] == pytest.approx(1 / 4)
    same = greedy_agreement(reference, reference)
    assert same["until_divergence"] == 1.0 and same["exact_match"] == 1.0
    assert math.isnan(greedy_agreement([], [])["exact_match"])
    with pytest.raises(ValueError, match="same prompts"):
        greedy_agreement(reference, variant[:2])


def test_task_scores_take_each_tasks_main_metric():
    tasks = {
        "mc": {"primary": "acc_norm", "metrics": {"acc": {"value": 0.5}, "acc_norm": {"value": 0.75}}},
        "gen": {"primary": "exact_match", "metrics": {"exact_match": {"value": 0.25}}},
    }  # fmt: skip
    scores = task_scores(tasks)
    assert scores == {
        "mc": {"metric": "acc_norm", "value": 0.75},
        "gen": {"metric": "exact_match", "value": 0.25},
    }
    assert mean_task_score(scores) == pytest.approx(0.5)
    assert mean_task_score({}) is None


def test_variant_parity_scores_differences_and_same_answers():
    reference = {
        "task_scores": {"mc": {"metric": "acc", "value": 0.75}},
        "items": {"mc": _items(["a", "b", "c", "d"], [1, 1, 1, 0])},
        "greedy": [[1, 2, 3]],
    }
    variant = {
        "task_scores": {"mc": {"metric": "acc", "value": 0.5}},
        "items": {"mc": _items(["a", "x", "c", "y"], [1, 0, 1, 0])},
        "greedy": [[1, 2, 4]],
    }
    got = variant_parity(reference, variant)
    mc = got["tasks"]["mc"]
    assert mc["reference"] == 0.75 and mc["value"] == 0.5
    assert mc["difference"] == pytest.approx(-0.25)
    assert mc["same_answer"] == pytest.approx(0.5)  # items 1 and 3
    assert got["greedy"]["until_divergence"] == pytest.approx(2 / 3)
    assert got["greedy"]["exact_match"] == 0.0
    no_greedy = variant_parity(reference, {**variant, "greedy": None})
    assert no_greedy["greedy"] is None


def test_parity_report_is_against_the_first_variant_and_renders():
    ref = {"name": "model", "backend": "native", "task_scores": {"mc": {"metric": "acc", "value": 1.0}},
           "items": {"mc": _items(["a", "b"], [1, 1])}, "greedy": [[1, 2], [3, 4]]}  # fmt: skip
    onnx = {"name": "onnx", "backend": "onnx", "task_scores": {"mc": {"metric": "acc", "value": 0.5}},
            "items": {"mc": _items(["a", "z"], [1, 0])}, "greedy": [[1, 2], [3, 5]]}  # fmt: skip
    clf = {"name": "classifier", "backend": None}  # measured nothing comparable: left out
    report = parity_report([ref, onnx, clf])
    assert report["reference"] == "model"
    assert [v["name"] for v in report["variants"]] == ["onnx"]
    (v,) = report["variants"]
    assert v["backend"] == "onnx" and v["greedy"]["until_divergence"] == pytest.approx(0.75)
    lines = parity_lines(report)
    assert lines[0].startswith("| variant | backend | greedy tokens identical until divergence")
    assert "mc acc" in lines[0]
    assert lines[2].startswith("| model (reference) | native |") and "1.0000" in lines[2]
    assert lines[3] == "| onnx | onnx | 75.0% | 50.0% | 0.5000 | -0.5000 | 50.0% |"
    assert parity_report([ref]) is None  # nothing to compare with
    assert parity_report([clf, ref]) is None  # the reference measured nothing


def test_a_metric_only_some_items_have_is_averaged_over_those_items():
    """regex is scored only on items with a pattern: parity must neither crash nor drop it."""
    from pocketlm.evals.task_parity import task_parity

    def items(gots, regex):
        out = []
        for i, (got, r) in enumerate(zip(gots, regex, strict=True)):
            scores = {"exact_match": float(got == "a")} | ({} if r is None else {"regex": r})
            out.append({"where": f"t:{i + 1}", "got": got, "scores": scores})
        return out

    reference = items(["a", "a", "b"], [None, 1.0, 0.0])
    variant = items(["a", "b", "b"], [None, 0.0, 0.0])
    got = task_parity(reference, variant)
    assert got["metrics"]["regex"] == {"reference": 0.5, "variant": 0.0, "difference": -0.5}
    assert got["metrics"]["exact_match"]["difference"] == pytest.approx(-1 / 3)
    assert got["same_answer"] == pytest.approx(2 / 3)
