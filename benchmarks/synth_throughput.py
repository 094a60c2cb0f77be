"""Black-box distillation throughput: `pocketlm synth` writing N examples from PocketLM's own
server as the teacher; wall time, records/s and completion tokens/s, with and without
top_logprobs, and the time a killed run takes to continue.

    python benchmarks/synth_throughput.py                       # a random-initialised S model
    python benchmarks/synth_throughput.py --model runs/big --examples 1000 --max-tokens 128
    python benchmarks/synth_throughput.py --examples 50 --logprob-examples 20   # a smoke run

The server (`pocketlm serve`, a subprocess on 127.0.0.1, continuous batching with --slots
sequences) and `pocketlm synth` (another subprocess, --concurrency = --slots) share the machine.
Prompts are N distinct story requests; answers are sampled (temperature 0.8, seeded) and kept
whole up to --max-tokens (--keep-truncated: a random-weight model seldom stops by itself). The
speed of serving alone at this concurrency is in serve_load.py's results. Without --model a model
of the S shape with random weights is built once under --work (speed does not depend on the
values). Writes benchmarks/results/synth_throughput.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import build_random_model, free_port, wait_healthy

ADJECTIVES = [
    "little",
    "brave",
    "sleepy",
    "curious",
    "tiny",
    "happy",
    "grumpy",
    "shy",
    "clever",
    "old",
]
ANIMALS = ["cat", "dog", "fox", "owl", "bear", "duck", "frog", "mouse", "rabbit", "turtle"]
PLACES = ["forest", "garden", "park", "river", "castle", "beach", "farm", "city", "cave", "school"]
WANTS = ["a red ball", "a new friend", "some cake", "the moon", "a lost key", "a warm hat"]


def prompts(n: int) -> list[str]:
    """n distinct story requests (up to 6,000)."""
    combos = itertools.product(ADJECTIVES, ANIMALS, PLACES, WANTS)
    return [
        f"Tell me a short story about a {a} {b} in the {c} who wants {d}."
        for a, b, c, d in itertools.islice(combos, n)
    ]


def run_synth(
    url: str, prompts_file: Path, out: Path, args: argparse.Namespace, top_logprobs: int,
    kill_after_s: float | None = None,
) -> dict:  # fmt: skip
    """One `pocketlm synth` run (killed after kill_after_s when given); its wall time and summary."""
    cmd = [
        sys.executable, "-m", "pocketlm", "synth", "--teacher-url", url,
        "--prompts", str(prompts_file), "--out", str(out), "--concurrency", str(args.slots),
        "--max-tokens", str(args.max_tokens), "--temperature", "0.8", "--seed", "1",
        "--keep-truncated", "--top-logprobs", str(top_logprobs),
    ]  # fmt: skip
    env = {**os.environ, "POCKETLM_NO_PROGRESS": "1"}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if kill_after_s is not None:
        try:
            proc.wait(timeout=kill_after_s)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
        return {"killed_after_s": time.perf_counter() - start}
    _, stderr = proc.communicate()
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"synth failed ({proc.returncode}):\n{stderr[-3000:]}")
    summary = json.loads((out / "manifest.json").read_text())["summary"]
    size = (out / "data.jsonl").stat().st_size
    this = summary["this_run"]
    return {
        "top_logprobs": top_logprobs,
        "records": summary["records"],
        "records_this_run": this["records"],
        "wall_s": round(wall, 2),
        "synth_elapsed_s": this["elapsed_s"],
        "records_per_s": round(this["records"] / wall, 2),
        "completion_tokens": this["completion_tokens"],
        "completion_tokens_per_s": round(this["completion_tokens"] / wall, 1),
        "http_requests": this["http_requests"],
        "retries": this["retries"],
        "data_bytes": size,
        "bytes_per_record": round(size / max(1, summary["records"])),
    }


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", type=Path, help="teacher model directory (default: a random S model)")
    p.add_argument("--work", type=Path, default=Path("runs/bench-serve"), help="for the S model")
    p.add_argument("--examples", type=int, default=1000)
    p.add_argument("--logprob-examples", type=int, default=200, help="the run with top_logprobs")
    p.add_argument("--top-logprobs", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--slots", type=int, default=8, help="server slots = synth concurrency")
    p.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent / "results" / "synth_throughput.json",
    )
    args = p.parse_args()

    model = args.model or build_random_model(args.work)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(Path(tempfile.gettempdir()) / f"synth-bench-{port}.log", "w")  # noqa: SIM115
    server = subprocess.Popen(
        [sys.executable, "-m", "pocketlm", "serve", "--model", str(model), "--port", str(port),
         "--slots", str(args.slots), "--max-queue", "256"],
        stderr=log, text=True,
    )  # fmt: skip
    load_before = os.getloadavg()
    rows = []
    try:
        wait_healthy(server, port)
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            plain, with_lp = work / "prompts.txt", work / "prompts-lp.txt"
            plain.write_text("\n".join(prompts(args.examples)) + "\n")
            with_lp.write_text("\n".join(prompts(args.logprob_examples)) + "\n")
            rows.append({"run": "plain", **run_synth(url, plain, work / "a", args, 0)})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
            rows.append(
                {
                    "run": "top_logprobs",
                    **run_synth(url, with_lp, work / "b", args, args.top_logprobs),
                }
            )
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
            # a killed run, then the same command: what is left is sent, nothing twice
            kill = run_synth(url, with_lp, work / "c", args, 0, kill_after_s=rows[-1]["wall_s"] / 2)
            rows.append(
                {
                    "run": "killed, then continued",
                    **kill,
                    **run_synth(url, with_lp, work / "c", args, 0),
                }
            )
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    report = {
        "meta": {
            "model": str(model),
            "slots": args.slots,
            "max_tokens": args.max_tokens,
            "cpus": os.cpu_count(),
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
            "machine": platform.machine(),
            "python": platform.python_version(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        },
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    for row in rows:
        print(json.dumps(row))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
