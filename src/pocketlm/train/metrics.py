"""A run's metrics: JSONL rows any tool can read, and a loss-curve PNG."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss.png"


class MetricsLog:
    """Append-only metrics.jsonl; on resume, rows after the checkpoint's step are dropped."""

    def __init__(self, run_dir: Path, resume_step: int | None = None) -> None:
        self.path = run_dir / METRICS_FILE
        if resume_step is None:
            self.path.write_text("", encoding="utf-8")
        elif self.path.exists():
            kept = [row for row in read_metrics(self.path) if row.get("step", 0) <= resume_step]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")

    def write(self, row: dict[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All rows of a metrics.jsonl (a torn last line from a crash is ignored)."""
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def smooth_centered(values: list[float], half_window: int) -> list[float]:
    """Mean of each value with up to half_window neighbours on each side, the same number on both.

    Centred, so a falling loss is not drawn late: a trailing average (an EMA) lags the steep
    first hundreds of steps and draws the curve far above the raw points there. Near the ends
    the window shrinks symmetrically, which keeps a straight line exact.
    """
    prefix = [0.0]
    for v in values:
        prefix.append(prefix[-1] + v)
    out = []
    for i in range(len(values)):
        k = min(half_window, i, len(values) - 1 - i)
        out.append((prefix[i + k + 1] - prefix[i - k]) / (2 * k + 1))
    return out


def plot_losses(rows: list[dict[str, Any]], out: Path, title: str = "training") -> Path:
    """Train loss (raw and smoothed) and validation loss (and the replayed original data's, when
    there is one) against tokens seen, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r["tokens"], r["loss"]) for r in rows if "loss" in r]
    val = [(r["tokens"], r["val_loss"]) for r in rows if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(7.5, 4.2), dpi=110)
    if train:
        xs, ys = zip(*train)
        ax.plot(xs, ys, color="#9ecae1", linewidth=0.8, label="train loss")
        smooth = smooth_centered(list(ys), max(1, len(ys) // 50))
        ax.plot(xs, smooth, color="#08519c", linewidth=1.6, label="train loss (smoothed)")
    if val:
        xs, ys = zip(*val)
        ax.plot(xs, ys, "o-", color="#e6550d", linewidth=1.6, markersize=4, label="validation loss")
    replay = [(r["tokens"], r["replay_val_loss"]) for r in rows if "replay_val_loss" in r]
    if replay:  # continued pretraining with --replay: the original data's curve (forgetting)
        xs, ys = zip(*replay)
        ax.plot(xs, ys, "s--", color="#756bb1", linewidth=1.4, markersize=4,
                label="validation loss, original data")  # fmt: skip
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
