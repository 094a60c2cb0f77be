"""How close `pocketlm plan` comes to what `pocketlm pretrain` then does: the tokens a time
budget buys and the peak memory, for the recommended size, on this machine, in one run.

    python benchmarks/plan_accuracy.py --tokens DIR --budgets 1m 5m   # results/plan_accuracy.json

Each budget: the plan for the preset (its own process), then the real run (its own process,
peak RSS from /usr/bin/time-like wait4 accounting); ratio = real ÷ estimated.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from machine import describe_machine
from pocketlm.common.cpu_load import measure_others_load

UNITS = {"": 1, "k": 1e3, "M": 1e6, "G": 1e9, "B": 1e9}


def _count(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)([kMGB]?)", text)
    assert m, text
    return float(m.group(1)) * UNITS[m.group(2)]


def _bytes(value: str, unit: str) -> float:
    return float(value) * {"kB": 1e3, "KB": 1e3, "MB": 1e6, "GB": 1e9, "B": 1}[unit]


def plan(tokens: str, preset: str, budget: str, env: dict) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "pocketlm", "plan", "--tokens", tokens, "--model", preset,
         "--budget", budget], env=env, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    row = next(line for line in out.splitlines() if line.startswith(preset))
    cells = row.split()
    # model params memory(value unit) weights(2) optim(2) activ.(2) step tok/s tokens epochs
    return {"memory_bytes": _bytes(cells[2], cells[3]), "tokens": _count(cells[12])}


def run(tokens: str, preset: str, budget: str, env: dict) -> dict:
    out = Path(tempfile.mkdtemp(prefix="plan-acc-")) / "run"
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pocketlm", "pretrain", "--tokens", tokens, "--model", preset,
         "--budget", budget, "--out", str(out)], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    _, status, usage = os.wait4(proc.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, proc.stderr.read()
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x]
    return {
        "tokens": rows[-1]["tokens"],
        "peak_rss_bytes": usage.ru_maxrss * 1024,
        "wall_s": round(time.perf_counter() - t0, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--tokens", required=True)
    p.add_argument("--preset", default="pico-1m")
    p.add_argument("--budgets", nargs="+", default=["1m", "5m"])
    args = p.parse_args()
    env = {**os.environ, "POCKETLM_NO_PROGRESS": "1"}
    results = []
    for budget in args.budgets:
        load_before = measure_others_load(2.0)
        estimate = plan(args.tokens, args.preset, budget, env)
        real = run(args.tokens, args.preset, budget, env)
        row = {
            "budget": budget, "preset": args.preset, "estimate": estimate, "real": real,
            # cores other programs kept busy just before: a ratio far from 1 with a load here
            # measures the machine, not the plan
            "others_busy_cores_before": round(load_before, 2),
            "tokens_ratio": round(real["tokens"] / estimate["tokens"], 3),
            "memory_ratio": round(real["peak_rss_bytes"] / estimate["memory_bytes"], 3),
        }  # fmt: skip
        print(json.dumps(row), flush=True)
        results.append(row)
    dest = Path(__file__).parent / "results" / "plan_accuracy.json"
    dest.write_text(json.dumps({"machine": describe_machine(), "runs": results}, indent=2) + "\n")
    print(dest)


if __name__ == "__main__":
    main()
