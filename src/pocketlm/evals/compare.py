"""The trade-off table of `pocketlm compare` (pure): rows of measured variants -> which are
Pareto-optimal (quality against decode speed and against size), the markdown and the plot's axes.

A row is a dict with at least "name"; the measured keys are COLUMNS' (None: not measured).
Quality is the task score when any variant has it (a classifier's accuracy; a language model's
mean of its tasks' main metrics), else validation bits/byte. The parity of every variant with the
first (evals/artifact_parity) is its own table.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pocketlm.evals.artifact_parity import parity_lines
from pocketlm.evals.pareto import Panel, pareto_front, plot_pareto

# key, header, format of a value
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("name", "variant", "{}"),
    ("size_mb", "size MB", "{:,.2f}"),
    ("params", "parameters", "{:,}"),
    ("quantization", "weights", "{}"),
    ("decode_tokens_per_s", "decode tok/s", "{:,.1f}"),
    ("prefill_tokens_per_s", "prefill tok/s", "{:,.1f}"),
    ("time_to_first_token_s", "TTFT s", "{:.3f}"),
    ("peak_memory_mb", "peak memory MB", "{:,.0f}"),
    ("bpb", "val bits/byte", "{:.4f}"),
    ("task_accuracy", "task score", "{:.4f}"),
)
HIGHER_IS_BETTER = {
    "task_accuracy": True,
    "bpb": False,
    "decode_tokens_per_s": True,
    "size_mb": False,
}
QUALITY_LABELS = {"task_accuracy": "task score", "bpb": "validation bits/byte"}
FRONTS = {"speed": "decode_tokens_per_s", "size": "size_mb"}  # front name -> its x axis


def variant_names(paths: Sequence[str | Path]) -> list[str]:
    """Short distinct names for paths: the shortest trailing parts that tell them apart
    (`runs/a/model`, `runs/b/model` -> `a/model`, `b/model`); a repeated path gets `#2`, `#3`."""
    parts = [Path(p).parts or (str(p),) for p in paths]
    names = []
    for i, mine in enumerate(parts):
        others = [p for j, p in enumerate(parts) if j != i and p != mine]
        k = 1
        while k < len(mine) and any(o[-k:] == mine[-k:] for o in others):
            k += 1
        names.append("/".join(mine[-k:]))
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:
            names[i] = f"{name}#{seen[name]}"
    return names


def quality_key(rows: Sequence[dict[str, Any]]) -> str | None:
    """task_accuracy when any row has it, else bpb when any has it, else None."""
    for key in ("task_accuracy", "bpb"):
        if any(r.get(key) is not None for r in rows):
            return key
    return None


def pareto_names(rows: Sequence[dict[str, Any]], x_key: str, y_key: str) -> list[str]:
    """Names of the rows on the Pareto front of x_key against y_key (each in its better sense)."""
    points = [(r.get(x_key), r.get(y_key)) for r in rows]
    front = pareto_front(points, (HIGHER_IS_BETTER[x_key], HIGHER_IS_BETTER[y_key]))
    return [rows[i]["name"] for i in front]


def fronts(rows: Sequence[dict[str, Any]]) -> dict[str, list[str]]:
    """Pareto-optimal names: quality against decode speed ("speed") and against size ("size");
    without any quality measured, decode speed against size ("speed")."""
    quality = quality_key(rows)
    if quality is None:
        return {"speed": pareto_names(rows, "decode_tokens_per_s", "size_mb")}
    return {front: pareto_names(rows, x, quality) for front, x in FRONTS.items()}


def compare_report(
    rows: Sequence[dict[str, Any]],
    settings: dict[str, Any],
    parity: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The whole report: settings, the rows, the quality used, the Pareto fronts and the parity
    with the reference (evals/artifact_parity.parity_report; None when not measured)."""
    return {
        "settings": settings,
        "quality": quality_key(rows),
        "variants": list(rows),
        "pareto": fronts(rows),
        "parity": parity,
    }


def parity_section(report: dict[str, Any]) -> list[str]:
    """The markdown section on the parity with the reference ([] without one)."""
    parity = report.get("parity")
    if not parity:
        return []
    return [
        "## Parity with the reference",
        "",
        f"Every variant against `{parity['reference']}`: greedy continuations of the same prompts "
        "compared token by token (the share of the reference's tokens matched until the first "
        "divergence; the share of continuations identical as a whole) and, per task, the main "
        "metric, its difference and the share of items answered the same.",
        "",
        *parity_lines(parity),
    ]


def _cell(row: dict[str, Any], key: str, fmt: str) -> str:
    value = row.get(key)
    return "–" if value is None else fmt.format(value)


def table_lines(report: dict[str, Any]) -> list[str]:
    """The markdown table: one row per variant, every column, Pareto-optimal names marked *."""
    optimal = {n for names in report["pareto"].values() for n in names}
    lines = [
        "| " + " | ".join(h for _, h, _ in COLUMNS) + " |",
        "|" + "|".join("---" if k == "name" else "---:" for k, _, _ in COLUMNS) + "|",
    ]
    for row in report["variants"]:
        cells = [_cell(row, k, f) for k, _, f in COLUMNS]
        cells[0] += " *" if row["name"] in optimal else ""
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def format_markdown(report: dict[str, Any], plot_name: str | None = "pareto.png") -> str:
    """The report as markdown: the table, the Pareto fronts, notes per variant, the settings."""
    quality = report["quality"]
    out = ["# Variants compared", "", *table_lines(report), ""]
    out.append("`*`: Pareto-optimal on at least one front; `–`: not measured.")
    out.append("")
    for front, names in report["pareto"].items():
        if quality is None:
            what = "decode tokens/s against size (no quality measured: pass --tokens or --task)"
        else:
            what = f"{QUALITY_LABELS[quality]} against {'decode tokens/s' if front == 'speed' else 'size on disk'}"
        out.append(f"- Pareto-optimal, {what}: {', '.join(names) or 'none'}")
    section = parity_section(report)
    if section:
        out += ["", *section]
    notes = [(r["name"], n) for r in report["variants"] for n in r.get("notes", [])]
    if notes:
        out += ["", "## Notes", ""] + [f"- {name}: {note}" for name, note in notes]
    if plot_name:
        out += ["", f"![Pareto plot]({plot_name})"]
    out += ["", "## Settings", ""]
    out += [f"- {k}: {v}" for k, v in report["settings"].items()]
    return "\n".join(out) + "\n"


def plot_report(report: dict[str, Any], path: str | Path) -> Path:
    """The Pareto plot of a report: quality against decode tokens/s and against size on disk
    (without quality: decode tokens/s against size)."""
    rows = report["variants"]
    names = [r["name"] for r in rows]
    quality = report["quality"]
    speed = Panel([r.get("decode_tokens_per_s") for r in rows], "decode tokens/s", True)
    if quality is None:
        sizes = [r.get("size_mb") for r in rows]
        return plot_pareto(names, sizes, "size on disk, MB", False, [speed], path)
    size = Panel([r.get("size_mb") for r in rows], "size on disk, MB", False)
    y = [r.get(quality) for r in rows]
    return plot_pareto(
        names, y, QUALITY_LABELS[quality], HIGHER_IS_BETTER[quality], [speed, size], path
    )
