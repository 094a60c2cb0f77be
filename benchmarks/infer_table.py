"""Markdown tables for RESULTS.md from an infer_speed.py result file: PocketLM against llama.cpp at
every shape and precision (decode, prefill, time to first token, peak memory, bandwidth), and
where PocketLM's decode time goes (its per-phase profile).

    python benchmarks/infer_table.py                                # results/infer_speed.json
    python benchmarks/infer_table.py results/infer_speed.json --profile

Ratios are PocketLM over llama.cpp's own llama-bench (`tg N @ d P`, `pp P`) where the run has it,
else over llama-cpp-python; both llama.cpp columns are shown.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from infer_shapes import PRECISIONS

PHASES = ("qkv", "attention", "o_proj", "ffn_gate_up", "ffn_down", "lm_head")


def _fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if not a or not b else f"**{a / b:.2f}×**"


def speed_rows(results: dict) -> list[str]:
    """One markdown row per shape and precision PocketLM ran."""
    head = (
        "| shape | ours vs llama.cpp | PocketLM decode | llama-bench decode | llama-cpp-python "
        "decode | decode ratio | PocketLM prefill | llama-bench prefill | prefill ratio | "
        "TTFT ours / llama.cpp s | peak MB ours / llama.cpp | ours GB/s (% read bw) |"
    )
    lines = [head, "|" + "---|" * 12]
    for shape, rows in results.items():
        for ours, theirs in PRECISIONS.items():
            a = rows.get(f"pocketlm {ours}")
            if not a or "decode" not in a:
                continue
            bench = rows.get(f"llama-bench {theirs.upper()}") or {}
            py = rows.get(f"llama.cpp {theirs.upper()}") or {}
            ref = bench if bench.get("decode") else py
            lines.append(
                f"| {shape} | {ours} vs {theirs.upper()} | {_fmt(a['decode'])} | "
                f"{_fmt(bench.get('decode'))} | {_fmt(py.get('decode'))} | "
                f"{_ratio(a['decode'], ref.get('decode'))} | {_fmt(a['prefill'])} | "
                f"{_fmt(bench.get('prefill'))} | {_ratio(a['prefill'], ref.get('prefill'))} | "
                f"{_fmt(a.get('ttft'), 2)} / {_fmt(py.get('ttft'), 2)} | "
                f"{_fmt(a.get('rss_mb'))} / {_fmt(py.get('rss_mb'))} | "
                f"{_fmt(a.get('weights_gbs'), 1)} ({_fmt(a.get('pct_read_bw'))}%) |"
            )
    return lines


def profile_rows(results: dict, new_tokens: int) -> list[str]:
    """Milliseconds per decode token and each phase's share, from the profiled repetition (the
    first; its speed can differ from the median the speed table shows)."""
    lines = ["| shape | precision | ms / token | " + " | ".join(PHASES) + " | rest |"]
    lines.append("|" + "---|" * (len(PHASES) + 4))
    for shape, rows in results.items():
        for ours in PRECISIONS:
            a = rows.get(f"pocketlm {ours}")
            if not a or "profile" not in a:
                continue
            prof = {k: v * 1000 / new_tokens for k, v in a["profile"].items()}  # ms per token
            total = sum(prof.values())
            shares = [f"{100 * prof.get(p, 0.0) / total:.0f}%" for p in PHASES]
            rest = total - sum(prof.get(p, 0.0) for p in PHASES)
            lines.append(
                f"| {shape} | {ours} | {total:.2f} | "
                + " | ".join(shares)
                + f" | {100 * rest / total:.0f}% |"
            )
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "file", nargs="?", default=str(Path(__file__).parent / "results" / "infer_speed.json")
    )
    p.add_argument("--profile", action="store_true", help="also the per-phase decode profile")
    args = p.parse_args()
    report = json.loads(Path(args.file).read_text())
    print("\n".join(speed_rows(report["results"])))
    if args.profile:
        print()
        print("\n".join(profile_rows(report["results"], report["meta"]["new_tokens"])))


if __name__ == "__main__":
    main()
