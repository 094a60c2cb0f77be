"""How far each variant of a model (quantized, exported to ONNX or GGUF, run on another backend)
is from the reference, the first variant `pocketlm compare` measures (pure).

A variant's measurement is a dict with, where measured: "task_scores" ({task: {"metric": the
task's main metric, "value"}}), "items" ({task: item records, as task-eval's items.jsonl}) and
"greedy" (the token ids of its greedy continuations of fixed prompts, one list per prompt). The
parity against the reference: per task the score difference and the share of items with the same
answer (evals/task_parity), and greedy token agreement: the share of the reference's greedy tokens
the variant reproduces position by position until its first divergence, and the share of
continuations identical as a whole.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pocketlm.evals.task_parity import task_parity


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens `a` and `b` share."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def greedy_agreement(
    reference: Sequence[Sequence[int]], variant: Sequence[Sequence[int]]
) -> dict[str, Any]:
    """Agreement of two sets of greedy continuations of the same prompts: "until_divergence",
    the share of the reference's tokens matched before the first differing position (a shorter
    continuation diverges where it ends); "exact_match", the share of identical continuations."""
    if len(reference) != len(variant):
        raise ValueError(
            f"greedy continuations of {len(reference)} and {len(variant)} prompts: "
            "both must continue the same prompts"
        )
    total = sum(len(r) for r in reference)
    matched = sum(common_prefix(r, v) for r, v in zip(reference, variant, strict=True))
    same = sum(list(r) == list(v) for r, v in zip(reference, variant, strict=True))
    return {
        "prompts": len(reference),
        "tokens": total,
        "until_divergence": matched / total if total else float("nan"),
        "exact_match": same / len(reference) if reference else float("nan"),
    }


def task_scores(tasks: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """{task: {"metric", "value"}}: each task's main metric, from a task-eval report's "tasks"."""
    return {
        name: {"metric": t["primary"], "value": t["metrics"][t["primary"]]["value"]}
        for name, t in tasks.items()
    }


def mean_task_score(scores: Mapping[str, Mapping[str, Any]]) -> float | None:
    """The mean of the tasks' main metrics (each in [0, 1], higher better); None without tasks."""
    values = [s["value"] for s in scores.values()]
    return sum(values) / len(values) if values else None


def variant_parity(reference: Mapping[str, Any], variant: Mapping[str, Any]) -> dict[str, Any]:
    """A variant against the reference: "tasks" ({task: metric, reference, value, difference,
    same_answer}, over the tasks both scored) and "greedy" (greedy_agreement, or None)."""
    tasks = {}
    ref_scores, scores = reference.get("task_scores") or {}, variant.get("task_scores") or {}
    ref_items, items = reference.get("items") or {}, variant.get("items") or {}
    for task, ref in ref_scores.items():
        if task not in scores:
            continue
        entry = {
            "metric": ref["metric"],
            "reference": ref["value"],
            "value": scores[task]["value"],
            "difference": scores[task]["value"] - ref["value"],
            "same_answer": None,
        }
        if task in ref_items and task in items:
            entry["same_answer"] = task_parity(ref_items[task], items[task])["same_answer"]
        tasks[task] = entry
    greedy = None
    if reference.get("greedy") is not None and variant.get("greedy") is not None:
        greedy = greedy_agreement(reference["greedy"], variant["greedy"])
    return {"tasks": tasks, "greedy": greedy}


def _measured(row: Mapping[str, Any]) -> bool:
    return bool(row.get("task_scores")) or row.get("greedy") is not None


def parity_report(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """Every variant against the first (the reference): {"reference": its name,
    "reference_backend", "tasks": its task scores, "variants": [{"name", "backend", "tasks",
    "greedy"}]}; None when the first
    measured nothing to compare with (a classifier) or it stands alone."""
    if len(rows) < 2 or not _measured(rows[0]):
        return None
    reference = rows[0]
    return {
        "reference": reference["name"],
        "reference_backend": reference.get("backend"),
        "tasks": dict(reference.get("task_scores") or {}),
        "variants": [
            {"name": r["name"], "backend": r.get("backend"), **variant_parity(reference, r)}
            for r in rows[1:]
            if _measured(r)
        ],
    }


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def parity_lines(parity: Mapping[str, Any]) -> list[str]:
    """The parity as a markdown table: the reference's scores, then each variant's greedy token
    agreement and per task its score, difference and same-answer share."""
    tasks = list(parity["tasks"])
    header = ["variant", "backend", "greedy tokens identical until divergence",
              "identical greedy continuations"]  # fmt: skip
    for task in tasks:
        metric = parity["tasks"][task]["metric"]
        header += [f"{task} {metric}", "Δ", "same answer"]
    lines = ["| " + " | ".join(header) + " |", "|---|---|" + "---:|" * (len(header) - 2)]
    ref_cells = [
        f"{parity['reference']} (reference)",
        parity.get("reference_backend") or "",
        "–",
        "–",
    ]
    for task in tasks:
        ref_cells += [f"{parity['tasks'][task]['value']:.4f}", "–", "–"]
    lines.append("| " + " | ".join(ref_cells) + " |")
    for v in parity["variants"]:
        greedy = v["greedy"] or {}
        cells = [v["name"], v.get("backend") or "", _pct(greedy.get("until_divergence")),
                 _pct(greedy.get("exact_match"))]  # fmt: skip
        for task in tasks:
            t = v["tasks"].get(task)
            if t is None:
                cells += ["–", "–", "–"]
            else:
                cells += [f"{t['value']:.4f}", f"{t['difference']:+.4f}", _pct(t["same_answer"])]
        lines.append("| " + " | ".join(cells) + " |")
    return lines
