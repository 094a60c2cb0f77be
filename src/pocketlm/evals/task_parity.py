"""How two runs of the same tasks differ: the model as trained against a variant that ships
(quantized, exported to GGUF or ONNX, run on another backend). Per task: each metric's value in
both and the difference, the share of items where both gave the same answer (the same choice or
label, the same generated text), and for scored choices the largest and mean absolute difference
of the log-likelihoods. Reads the "items" of two `pipelines.task_eval.evaluate_tasks` reports (or
their items.jsonl); pure.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pocketlm.common.errors import InputError
from pocketlm.evals.task_metrics import aggregate


def read_items(path: str | Path) -> dict[str, list[dict[str, Any]]]:
    """task -> item records of a task-eval artifact's items.jsonl (a file or its directory)."""
    p = Path(path)
    p = p / "items.jsonl" if p.is_dir() else p
    out: dict[str, list[dict[str, Any]]] = {}
    with p.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            try:
                record = json.loads(line)
                out.setdefault(record.pop("task"), []).append(record)
            except (ValueError, KeyError, AttributeError) as exc:
                raise InputError(f"not an item record ({exc})", path=p, line=number) from exc
    return out


def task_parity(
    reference: Sequence[Mapping[str, Any]], variant: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """One task's parity between two runs over the same items (in the same order)."""
    if [r["where"] for r in reference] != [r["where"] for r in variant]:
        raise InputError("the two runs scored different items: run both on the same task files")
    # a metric some items lack (regex: only items with a pattern) is averaged over those that
    # have it, as the task's own report does
    ref = aggregate([r["scores"] for r in reference]) if reference else {}
    var = aggregate([v["scores"] for v in variant]) if variant else {}
    metrics: dict[str, dict[str, float]] = {}
    for name in ref:
        if name in var:
            a, b = ref[name]["value"], var[name]["value"]
            metrics[name] = {"reference": a, "variant": b, "difference": b - a}
    same = sum(r["got"] == v["got"] for r, v in zip(reference, variant, strict=True))
    out: dict[str, Any] = {
        "items": len(reference),
        "metrics": metrics,
        "same_answer": same / len(reference) if reference else float("nan"),
    }
    deltas = [
        abs(x - y)
        for r, v in zip(reference, variant, strict=True)
        for x, y in zip(r.get("loglikelihoods", ()), v.get("loglikelihoods", ()), strict=True)
    ]
    if deltas:
        out["loglikelihood_abs_diff"] = {
            "max": max(deltas),
            "mean": math.fsum(deltas) / len(deltas),
        }
    return out


def parity(
    reference: Mapping[str, Sequence[Mapping[str, Any]]],
    variant: Mapping[str, Sequence[Mapping[str, Any]]],
) -> dict[str, dict[str, Any]]:
    """task -> task_parity, over the tasks both runs have."""
    return {t: task_parity(reference[t], variant[t]) for t in reference if t in variant}


def parity_markdown(table: Mapping[str, Mapping[str, Any]], names: tuple[str, str]) -> str:
    """The parity as a markdown table: one row per task and metric."""
    a, b = names
    lines = [
        f"| task | metric | {a} | {b} | difference | same answer | max abs Δ log-likelihood |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for task, entry in table.items():
        diff = entry.get("loglikelihood_abs_diff", {}).get("max")
        for metric, m in entry["metrics"].items():
            lines.append(
                f"| {task} | {metric} | {m['reference']:.4f} | {m['variant']:.4f} | "
                f"{m['difference']:+.4f} | {entry['same_answer']:.1%} | "
                f"{'' if diff is None else f'{diff:.4f}'} |"
            )
    return "\n".join(lines) + "\n"
