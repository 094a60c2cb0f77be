"""llama.cpp's own llama-bench as a second llama.cpp measurement in infer_speed.py, at the same
work as PocketLM's run: decode is `tg N @ d P` (N new tokens after a P-token context, the prompt),
prefill is `pp P` (a P-token prompt into an empty cache). Flags as in llama-cpp-python 0.3.36's
vendored tools/llama-bench (`-d/--n-depth`, `-o json`: a list of tests with avg_ts in tokens/s).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path


def bench_commands(
    binary: Path, gguf: Path, *, prompt: int, new: int, threads: int, reps: int
) -> list[list[str]]:
    """The two llama-bench command lines: prefill `pp prompt`, then decode `tg new @ d prompt`."""
    base = [str(binary), "-m", str(gguf), "-t", str(threads), "-r", str(reps), "-o", "json"]
    return [
        [*base, "-p", str(prompt), "-n", "0"],
        [*base, "-p", "0", "-n", str(new), "-d", str(prompt)],
    ]


def parse_tests(stdout: str) -> dict[str, float]:
    """{"prefill" and/or "decode": tokens/s} from one `-o json` output (pp tests: n_gen 0)."""
    start = stdout.find("[")  # a build may print lines before the JSON
    if start < 0:
        raise ValueError(f"llama-bench printed no JSON list: {stdout[:200]!r}")
    out: dict[str, float] = {}
    for test in json.loads(stdout[start:]):
        key = "prefill" if test["n_gen"] == 0 else "decode"
        out[key] = float(test["avg_ts"])
    return out


def run_llama_bench(
    binary: Path, gguf: Path, *, prompt: int, new: int, threads: int, reps: int
) -> dict:
    """{"prefill", "decode"} tokens/s from llama-bench, or {"error": its last stderr line}."""
    result: dict = {}
    for cmd in bench_commands(binary, gguf, prompt=prompt, new=new, threads=threads, reps=reps):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            return {"error": (proc.stderr.strip().splitlines() or ["llama-bench failed"])[-1]}
        try:
            result.update(parse_tests(proc.stdout))
        except (ValueError, KeyError) as exc:
            return {"error": f"llama-bench output: {exc}"}
    return result
