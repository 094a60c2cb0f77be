"""No run is lost: `pocketlm pretrain` SIGKILLed at random moments, resumed each time, against
an uninterrupted run (the same check as tests/unit/train/test_kill_anywhere.py, many more kills).

    python benchmarks/kill_reliability.py --chains 5   # writes results/kill_reliability.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STEPS = 40


def _args(tokens: Path, out: Path) -> list[str]:
    return [
        sys.executable, "-m", "pocketlm", "pretrain", "--tokens", str(tokens), "--out", str(out),
        "--layers", "2", "--dim", "32", "--heads", "2", "--kv-heads", "1", "--ctx", "32",
        "--batch-size", "4", "--max-steps", str(STEPS), "--precision", "fp32", "--device", "cpu",
        "--set", "train.log_every=1", "--set", "train.eval_tokens=256", "--set", "train.threads=1",
        "--set", "train.compile=off",
    ] + (["--resume"] if out.exists() else [])  # fmt: skip


def _losses(run: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line]
    return {r["step"]: r["loss"] for r in rows}


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--chains", type=int, default=5, help="runs, each killed until it finishes")
    p.add_argument("--tokens", required=True, help="a tokens artifact (any small one)")
    args = p.parse_args()
    env = {**os.environ, "POCKETLM_NO_PROGRESS": "1"}
    work = Path(tempfile.mkdtemp(prefix="kills-"))
    subprocess.run(_args(Path(args.tokens), work / "ref"), env=env, check=True, capture_output=True)
    reference = _losses(work / "ref")
    rng = random.Random(2026)
    kills = equal = 0
    for chain in range(args.chains):
        run = work / f"run{chain}"
        while not (run / "model" / "manifest.json").is_file():
            proc = subprocess.Popen(_args(Path(args.tokens), run), env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
            time.sleep(rng.uniform(0.5, 4.5))
            if proc.poll() is not None:
                continue
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
        equal += _losses(run) == reference
        print(f"chain {chain + 1}: {kills} kills so far, equal runs {equal}", file=sys.stderr)
    out = {"chains": args.chains, "kills": kills, "runs_equal_to_uninterrupted": equal}
    (Path(__file__).resolve().parent / "results" / "kill_reliability.json").write_text(
        json.dumps(out, indent=2) + "\n"
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
