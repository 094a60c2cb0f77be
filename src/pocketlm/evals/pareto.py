"""Pareto fronts of measured variants (pure), and the plot of quality against speed and size."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

Point = Sequence[float | None]


def _missing(value: float | None) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def dominates(a: Point, b: Point, maximize: Sequence[bool]) -> bool:
    """Whether `a` is at least as good as `b` on every axis and better on one."""
    better = False
    for x, y, up in zip(a, b, maximize, strict=True):
        gain = (x - y) if up else (y - x)  # type: ignore[operator]
        if gain < 0:
            return False
        better |= gain > 0
    return better


def pareto_front(points: Sequence[Point], maximize: Sequence[bool]) -> list[int]:
    """Indices (ascending) of the points no other point dominates; `maximize[k]` says whether axis
    k is better higher. A point missing a coordinate (None or NaN) is on no front; equal points
    are all on it."""
    whole = [i for i, p in enumerate(points) if not any(_missing(v) for v in p)]
    return [i for i in whole if not any(dominates(points[j], points[i], maximize) for j in whole)]


@dataclass(frozen=True)
class Panel:
    """One scatter: x values (None where not measured), its label and whether higher is better."""

    x: Sequence[float | None]
    label: str
    higher_better: bool


def plot_pareto(
    names: Sequence[str],
    y: Sequence[float | None],
    y_label: str,
    y_higher_better: bool,
    panels: Sequence[Panel],
    path: str | Path,
    title: str = "variants compared (Pareto-optimal ringed)",
) -> Path:
    """A PNG with one scatter per panel (panel.x against y, each point named), the Pareto-optimal
    points of each panel ringed and joined by a step line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5.6 * len(panels), 4.6), dpi=110)
    axes = [axes] if len(panels) == 1 else list(axes)
    for ax, panel in zip(axes, panels, strict=True):
        points = list(zip(panel.x, y, strict=True))
        front = pareto_front(points, (panel.higher_better, y_higher_better))
        shown = [i for i, p in enumerate(points) if not any(_missing(v) for v in p)]
        ax.scatter([panel.x[i] for i in shown], [y[i] for i in shown], color="tab:blue", zorder=3)
        for i in shown:
            ax.annotate(names[i], (panel.x[i], y[i]), textcoords="offset points", xytext=(5, 4),
                        fontsize=8)  # fmt: skip
        if front:
            ordered = sorted(front, key=lambda i: panel.x[i])  # type: ignore[arg-type, return-value]
            ax.plot([panel.x[i] for i in ordered], [y[i] for i in ordered], color="tab:red",
                    drawstyle="steps-post", alpha=0.6, zorder=2)  # fmt: skip
            ax.scatter([panel.x[i] for i in front], [y[i] for i in front], s=160,
                       facecolors="none", edgecolors="tab:red", linewidths=1.6, zorder=4,
                       label="Pareto-optimal")  # fmt: skip
            ax.legend(loc="best", fontsize=8)
        better_x = "higher" if panel.higher_better else "lower"
        ax.set_xlabel(f"{panel.label} ({better_x} is better)")
        ax.set_ylabel(f"{y_label} ({'higher' if y_higher_better else 'lower'} is better)")
        ax.ticklabel_format(axis="both", useOffset=False, style="plain")  # real values on ticks
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out)
    plt.close(fig)
    return out
