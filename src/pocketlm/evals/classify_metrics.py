"""Classification quality from true class ids and predicted probabilities: accuracy, macro-F1,
per-class precision / recall / F1, the confusion matrix, calibration (expected calibration error)
and log loss, as plain JSON-ready numbers; a confusion-matrix PNG and a text table of them.

Numpy only. The prediction is the most probable class and its probability the confidence.
Precision, recall or F1 that would divide by zero (a class never predicted, or absent from the
data) are 0, as scikit-learn's zero_division=0; macro averages run over the classes present in
the data or the predictions (scikit-learn's default when no label list is given), so a class
absent from both does not count as a failure.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ECE_BINS = 15  # equal-width confidence bins, as Guo et al. (2017)
_SUM_TOLERANCE = 1e-3  # a probability row may sum to 1 +- this (float32 softmax)


def classification_metrics(
    true_ids: Sequence[int] | np.ndarray, probs: np.ndarray, labels: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class precision / recall / F1 / support, the confusion matrix
    (rows true, columns predicted), ECE over 15 bins and log loss of (N,) true ids and (N, C)
    class probabilities for C labels."""
    y, p = _checked(true_ids, probs, labels)
    n, n_classes = p.shape
    pred = p.argmax(axis=1)  # (N,)
    confidence = p[np.arange(n), pred]  # (N,)
    correct = pred == y
    # (C * C,) counts of true * C + predicted -> (C, C): rows true, columns predicted
    confusion = np.bincount(y * n_classes + pred, minlength=n_classes * n_classes).reshape(
        n_classes, n_classes
    )
    hits = np.diag(confusion)
    support, predicted = confusion.sum(axis=1), confusion.sum(axis=0)
    precision = _ratio(hits, predicted)
    recall = _ratio(hits, support)
    f1 = _ratio(2 * precision * recall, precision + recall)
    present = (support > 0) | (predicted > 0)
    per_class = {
        label: {
            "precision": float(precision[k]),
            "recall": float(recall[k]),
            "f1": float(f1[k]),
            "support": int(support[k]),
            "predicted": int(predicted[k]),
        }
        for k, label in enumerate(labels)
    }
    true_prob = np.clip(p[np.arange(n), y], 1e-12, 1.0)
    return {
        "n": int(n),
        "labels": list(labels),
        "accuracy": float(correct.mean()),
        "macro_f1": float(f1[present].mean()),
        "macro_precision": float(precision[present].mean()),
        "macro_recall": float(recall[present].mean()),
        "per_class": per_class,
        "confusion": confusion.tolist(),
        "ece": expected_calibration_error(confidence, correct),
        "ece_bins": ECE_BINS,
        "mean_confidence": float(confidence.mean()),
        "log_loss": float(-np.log(true_prob).mean()),
    }


def expected_calibration_error(
    confidence: np.ndarray, correct: np.ndarray, n_bins: int = ECE_BINS
) -> float:
    """Sum over equal-width confidence bins (lo, hi] of |accuracy - mean confidence| times the
    bin's share of the examples."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    if confidence.size == 0:
        return 0.0
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # side="left": a confidence equal to an edge belongs to the bin it closes, (lo, hi]
    bins = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    conf_sum = np.bincount(bins, weights=confidence, minlength=n_bins)
    hit_sum = np.bincount(bins, weights=correct, minlength=n_bins)
    gap = np.abs(hit_sum - conf_sum)  # = count * |accuracy - confidence| per bin
    return float(gap.sum() / confidence.size)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, 0 where den is 0."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def _checked(
    true_ids: Sequence[int] | np.ndarray, probs: np.ndarray, labels: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """(true ids as int64 (N,), probabilities as float64 (N, C)), or a ValueError saying what
    is wrong with them."""
    y = np.asarray(true_ids)
    p = np.asarray(probs, dtype=np.float64)
    n_classes = len(labels)
    if p.ndim != 2 or p.shape[1] != n_classes:
        raise ValueError(f"probs must be (N, {n_classes}) for {n_classes} labels, got {p.shape}")
    if y.shape != (p.shape[0],):
        raise ValueError(f"true_ids must be ({p.shape[0]},) like probs' rows, got {y.shape}")
    if p.shape[0] == 0:
        raise ValueError("no examples to score")
    if y.dtype.kind not in "iu":
        raise ValueError(f"true_ids must be integer class ids, got {y.dtype}")
    if y.min() < 0 or y.max() >= n_classes:
        raise ValueError(f"true_ids must be in [0, {n_classes}), got {y.min()}..{y.max()}")
    sums = p.sum(axis=1)
    bad = np.flatnonzero(~np.isfinite(sums) | (np.abs(sums - 1.0) > _SUM_TOLERANCE))
    if bad.size or (p < 0).any():
        row = int(bad[0]) if bad.size else int(np.argwhere(p < 0)[0, 0])
        raise ValueError(
            f"probs must be probabilities (softmax the logits first): row {row} sums to "
            f"{sums[row]:.4g} with minimum {p[row].min():.4g}"
        )
    return y.astype(np.int64), p


def plot_confusion(
    confusion: Sequence[Sequence[int]] | np.ndarray,
    labels: Sequence[str],
    path: str | Path,
    title: str = "confusion matrix",
) -> Path:
    """The confusion matrix (rows true, columns predicted) as a PNG: counts in the cells, each
    row coloured by its share of the true class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.asarray(confusion, dtype=np.int64)  # (C, C) true x predicted
    n_classes = len(labels)
    if counts.shape != (n_classes, n_classes):
        raise ValueError(f"confusion must be ({n_classes}, {n_classes}), got {counts.shape}")
    shares = _ratio(counts, counts.sum(axis=1, keepdims=True))  # row-normalised, (C, C)
    side = min(max(3.8, 0.5 * n_classes + 2.4), 24.0)  # inches: room for the class names
    fig, ax = plt.subplots(figsize=(side + 1.0, side), dpi=110)
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    if n_classes <= 40:  # beyond this the numbers would not fit their cells
        font = max(5.0, 10.0 - 0.15 * n_classes)
        for i in range(n_classes):
            for j in range(n_classes):
                colour = "white" if shares[i, j] > 0.5 else "black"
                ax.text(
                    j, i, f"{counts[i, j]:,}", ha="center", va="center", color=colour, fontsize=font
                )
    ticks = np.arange(n_classes)
    long_names = max((len(str(x)) for x in labels), default=0) > 6
    ax.set_xticks(
        ticks,
        [str(x) for x in labels],
        rotation=45 if long_names else 0,
        ha="right" if long_names else "center",
    )
    ax.set_yticks(ticks, [str(x) for x in labels])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{title} ({int(counts.sum()):,} examples)")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out)
    plt.close(fig)
    return out


def format_report(metrics: dict[str, Any]) -> str:
    """A text table of classification_metrics: one line per class, then accuracy, the macro
    averages and calibration."""
    names = list(metrics["per_class"])
    width = max([len("macro avg"), *(len(str(x)) for x in names)])
    head = f"{'class':<{width}}  precision  recall      f1  support  predicted"
    lines = [head, "-" * len(head)]
    for name in names:
        c = metrics["per_class"][name]
        lines.append(
            f"{name:<{width}}  {c['precision']:9.3f}  {c['recall']:6.3f}  {c['f1']:6.3f}  "
            f"{c['support']:7d}  {c['predicted']:9d}"
        )
    lines.append("-" * len(head))
    n = metrics["n"]
    lines.append(f"{'accuracy':<{width}}  {'':9}  {'':6}  {metrics['accuracy']:6.3f}  {n:7d}")
    lines.append(
        f"{'macro avg':<{width}}  {metrics['macro_precision']:9.3f}  "
        f"{metrics['macro_recall']:6.3f}  {metrics['macro_f1']:6.3f}  {n:7d}"
    )
    lines.append(
        f"calibration: ECE {metrics['ece']:.3f} ({metrics['ece_bins']} bins), mean confidence "
        f"{metrics['mean_confidence']:.3f}, log loss {metrics['log_loss']:.3f}"
    )
    return "\n".join(lines)
