"""The task evaluation report: per task its scores with standard errors and a few failures, as a
JSON-ready dict and as markdown."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pocketlm.evals.task_files import Task
from pocketlm.evals.task_metrics import aggregate, primary_metric
from pocketlm.evals.task_run import ItemResult

FAILURES_SHOWN = 5
_CUT = 300  # characters of a prompt or output a failure example keeps


def _cut(text: str, n: int = _CUT) -> str:
    return text if len(text) <= n else "…" + text[-(n - 1) :]


def task_summary(
    task: Task, results: Sequence[ItemResult], *, failures: int = FAILURES_SHOWN
) -> dict[str, Any]:
    """One task's entry: kind, items, metrics {name: {value, stderr}}, the primary metric and
    the first `failures` items that fail it."""
    metrics = aggregate([r.scores for r in results])
    primary = primary_metric(task.kind, metrics)
    failed = [r for r in results if r.scores.get(primary, 1.0) < 1.0][:failures]
    return {
        "path": task.path,
        "kind": task.kind,
        "items": len(results),
        "primary": primary,
        "metrics": metrics,
        "failures": [
            {
                "where": r.where,
                "prompt": _cut(r.prompt),
                "expected": r.expected,
                "got": _cut(r.got),
                **({"loglikelihoods": list(r.loglikelihoods)} if r.loglikelihoods else {}),
            }
            for r in failed
        ],
    }


def item_records(results: Sequence[ItemResult]) -> list[dict[str, Any]]:
    """Every item's outcome, for comparing runs (evals/task_parity): where it is, its scores,
    the model's answer (a choice, a label or the generated text) and the choices'
    log-likelihoods."""
    return [
        {
            "where": r.where,
            "scores": r.scores,
            "got": r.got,
            **({"loglikelihoods": list(r.loglikelihoods)} if r.loglikelihoods else {}),
        }
        for r in results
    ]


def _fmt(entry: Mapping[str, float | None]) -> str:
    value, stderr = entry["value"], entry["stderr"]
    text = f"{value:.4f}"
    return text + (f" ± {stderr:.4f}" if stderr is not None else "")


def report_markdown(report: Mapping[str, Any]) -> str:
    """The report as markdown: one table row per task and metric, then the failures."""
    lines = [
        f"# Evaluation of {report['model']}",
        "",
        f"backend {report['backend']}, {report['shots']}-shot, seed {report['seed']}, "
        f"{report['seconds']:.1f} s",
        "",
        "| task | kind | items | metric | value ± stderr |",
        "|---|---|---:|---|---|",
    ]
    for name, task in report["tasks"].items():
        for metric, entry in task["metrics"].items():
            mark = " (primary)" if metric == task["primary"] else ""
            lines.append(
                f"| {name} | {task['kind']} | {task['items']} | {metric}{mark} | {_fmt(entry)} |"
            )
    for name, task in report["tasks"].items():
        if not task["failures"]:
            continue
        lines += ["", f"## {name}: failures ({task['primary']})", ""]
        for f in task["failures"]:
            lines.append(f"- {f['where']}: expected {f['expected']!r}, got {f['got']!r}")
    return "\n".join(lines) + "\n"


def report_lines(report: Mapping[str, Any]) -> list[str]:
    """A short human summary: one line per task with its primary metric."""
    out = []
    for name, task in report["tasks"].items():
        entry = task["metrics"][task["primary"]]
        others = ", ".join(
            f"{m} {e['value']:.4f}" for m, e in task["metrics"].items() if m != task["primary"]
        )
        out.append(
            f"{name} ({task['kind']}, {task['items']} items): {task['primary']} {_fmt(entry)}"
            + (f"; {others}" if others else "")
        )
    return out
