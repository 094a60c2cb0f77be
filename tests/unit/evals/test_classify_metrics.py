"""Classification metrics on hand-checked cases (a class never predicted, perfect and imperfect
calibration), against scikit-learn where it is installed, the confusion-matrix PNG and the
text report."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pocketlm.evals.classify_metrics import (
    classification_metrics,
    expected_calibration_error,
    format_report,
    plot_confusion,
)

LABELS = ["a", "b", "c"]
TRUE = [0, 1, 2, 1, 0]
PROBS = np.array(
    [
        [0.8, 0.1, 0.1],  # a, right, confidence 0.8
        [0.1, 0.8, 0.1],  # b, right, 0.8
        [0.6, 0.3, 0.1],  # c predicted a: wrong, 0.6
        [0.2, 0.7, 0.1],  # b, right, 0.7
        [0.5, 0.4, 0.1],  # a, right, 0.5
    ]
)


@pytest.mark.filterwarnings("error")  # no division-by-zero warning for the class never predicted
def test_hand_checked_metrics_with_a_class_never_predicted():
    m = classification_metrics(TRUE, PROBS, LABELS)
    assert m["n"] == 5 and m["labels"] == LABELS
    assert m["confusion"] == [[2, 0, 0], [0, 2, 0], [1, 0, 0]]  # rows true, columns predicted
    assert m["accuracy"] == pytest.approx(0.8)
    a, b, c = (m["per_class"][x] for x in LABELS)
    assert (a["precision"], a["recall"], a["f1"]) == pytest.approx((2 / 3, 1.0, 0.8))
    assert (b["precision"], b["recall"], b["f1"]) == pytest.approx((1.0, 1.0, 1.0))
    assert (c["precision"], c["recall"], c["f1"]) == (0.0, 0.0, 0.0)  # never predicted
    assert (a["support"], b["support"], c["support"]) == (2, 2, 1)
    assert (a["predicted"], b["predicted"], c["predicted"]) == (3, 2, 0)
    assert m["macro_f1"] == pytest.approx(1.8 / 3)
    assert m["macro_precision"] == pytest.approx((2 / 3 + 1) / 3)
    # bins (lo, hi] of width 1/15: 0.8 x2 right -> |1 - 0.8| * 2; 0.6 wrong -> 0.6; 0.7 right
    # -> 0.3; 0.5 right -> 0.5; over 5 examples
    assert m["ece"] == pytest.approx((0.4 + 0.6 + 0.3 + 0.5) / 5)
    assert m["ece_bins"] == 15 and m["mean_confidence"] == pytest.approx(0.68)
    expected_loss = -np.mean(np.log([0.8, 0.8, 0.1, 0.7, 0.5]))
    assert m["log_loss"] == pytest.approx(expected_loss)
    json.dumps(m)  # plain numbers only


def test_a_class_absent_from_data_and_predictions_does_not_count_in_the_macro_average():
    probs = np.array([[0.9, 0.05, 0.05], [0.1, 0.85, 0.05]])
    m = classification_metrics([0, 1], probs, LABELS)
    assert m["accuracy"] == 1.0 and m["macro_f1"] == 1.0
    assert m["per_class"]["c"] == {
        "precision": 0.0,
        "recall": 0.0,
        "f1": 0.0,
        "support": 0,
        "predicted": 0,
    }


def test_perfect_calibration_gives_zero_ece():
    # 10 examples at confidence 0.8 with 8 right, 4 at 0.5 with 2 right, 3 one-hot and right
    probs = [[0.8, 0.2]] * 10 + [[0.5, 0.5]] * 4 + [[0.0, 1.0]] * 3
    true = [0] * 8 + [1] * 2 + [0, 0, 1, 1] + [1] * 3
    m = classification_metrics(true, np.array(probs), ["no", "yes"])
    assert m["ece"] == pytest.approx(0.0, abs=1e-12)
    assert m["accuracy"] == pytest.approx(13 / 17)
    one_hot = classification_metrics([0, 1], np.eye(2), ["no", "yes"])
    assert one_hot["ece"] == 0.0 and one_hot["log_loss"] == pytest.approx(0.0, abs=1e-9)


def test_ece_bins_are_equal_width_and_closed_on_the_right():
    # 0.2 is the top edge of bin 3 (2/15, 3/15]; 0.21 falls in the next bin
    assert expected_calibration_error(np.array([0.2, 0.2]), np.array([1, 0])) == pytest.approx(
        0.3
    )  # one bin: accuracy 0.5, confidence 0.2
    split = expected_calibration_error(np.array([0.2, 0.21]), np.array([1, 0]))
    assert split == pytest.approx((0.8 + 0.21) / 2)  # two bins
    wide = expected_calibration_error(np.array([0.2, 0.21]), np.array([1, 0]), n_bins=1)
    assert wide == pytest.approx(abs(0.5 - 0.205))


def test_agrees_with_scikit_learn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(300, 4))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    true = np.where(rng.random(300) < 0.6, probs.argmax(axis=1), rng.integers(0, 4, 300))
    m = classification_metrics(true, probs, ["w", "x", "y", "z"])
    pred = probs.argmax(axis=1)
    assert m["accuracy"] == pytest.approx(metrics.accuracy_score(true, pred))
    assert m["macro_f1"] == pytest.approx(metrics.f1_score(true, pred, average="macro"))
    assert m["confusion"] == metrics.confusion_matrix(true, pred).tolist()
    p, r, f, s = metrics.precision_recall_fscore_support(true, pred, zero_division=0)
    for k, name in enumerate(["w", "x", "y", "z"]):
        c = m["per_class"][name]
        assert (c["precision"], c["recall"], c["f1"], c["support"]) == pytest.approx(
            (p[k], r[k], f[k], s[k])
        )
    assert m["log_loss"] == pytest.approx(metrics.log_loss(true, probs))


@pytest.mark.parametrize(
    "true,probs,words",
    [
        ([0, 1], np.array([[2.0, -1.0], [0.5, 0.5]]), "softmax the logits first): row 0 sums to 1"),
        ([0, 1], np.array([[0.5, 0.5], [1.2, -0.2]]), "row 1 sums to 1 with minimum -0.2"),
        ([0, 2], np.eye(2), "true_ids must be in [0, 2)"),
        ([0], np.eye(2), "true_ids must be (2,)"),
        ([0.0, 1.0], np.eye(2), "integer class ids"),
        ([0, 1], np.ones((2, 3)) / 3, "probs must be (N, 2) for 2 labels"),
        ([], np.zeros((0, 2)), "no examples"),
    ],
)
def test_bad_inputs_say_what_is_wrong(true, probs, words):
    with pytest.raises(ValueError) as err:
        classification_metrics(true, probs, ["no", "yes"])
    assert words in str(err.value)


def test_confusion_png_is_written(tmp_path):
    m = classification_metrics(TRUE, PROBS, LABELS)
    out = plot_confusion(m["confusion"], LABELS, tmp_path / "confusion.png")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000
    names = [f"class number {k}" for k in range(12)]  # long names, many classes
    many = plot_confusion(np.eye(12, dtype=int) * 3, names, tmp_path / "many.png")
    assert many.stat().st_size > 2000
    with pytest.raises(ValueError, match=r"confusion must be \(2, 2\)"):
        plot_confusion(m["confusion"], ["a", "b"], tmp_path / "x.png")


def test_report_has_a_line_per_class():
    report = format_report(classification_metrics(TRUE, PROBS, LABELS))
    lines = report.splitlines()
    assert lines[0].split() == ["class", "precision", "recall", "f1", "support", "predicted"]
    assert lines[2].split() == ["a", "0.667", "1.000", "0.800", "2", "3"]
    assert lines[4].split() == ["c", "0.000", "0.000", "0.000", "1", "0"]
    assert "accuracy" in lines[6] and "0.800" in lines[6]
    assert lines[7].split()[:2] == ["macro", "avg"] and "0.600" in lines[7]
    assert f"ECE {0.36:.3f} (15 bins)" in lines[8]
