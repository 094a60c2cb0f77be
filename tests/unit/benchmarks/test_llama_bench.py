"""benchmarks/llama_bench.py: the llama-bench command lines at equal work and their JSON, run
against a fake binary that records its arguments and prints llama-bench's `-o json` layout."""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

from benchmarks.llama_bench import bench_commands, parse_tests, run_llama_bench

FAKE = """#!{python}
import json, sys
args = sys.argv[1:]
with open({log!r}, "a") as fh:
    fh.write(json.dumps(args) + "\\n")
if "--fail" in open({log!r}).read():
    sys.exit("error: failed to load model")
p, n = int(args[args.index("-p") + 1]), int(args[args.index("-n") + 1])
d = int(args[args.index("-d") + 1]) if "-d" in args else 0
test = dict(n_prompt=p, n_gen=n, n_depth=d, avg_ns=1, avg_ts=100.0 + p + n, samples_ts=[1.0])
print(json.dumps([test], indent=2))
"""


def fake_binary(tmp_path: Path) -> tuple[Path, Path]:
    log = tmp_path / "calls.jsonl"
    binary = tmp_path / "llama-bench"
    binary.write_text(FAKE.format(python=sys.executable, log=str(log)))
    binary.chmod(binary.stat().st_mode | stat.S_IEXEC)
    return binary, log


def test_commands_are_prefill_then_decode_after_the_prompt_depth():
    pp, tg = bench_commands(Path("b"), Path("m.gguf"), prompt=128, new=64, threads=2, reps=3)
    assert pp == ["b", "-m", "m.gguf", "-t", "2", "-r", "3", "-o", "json", "-p", "128", "-n", "0"]
    assert tg[-6:] == ["-p", "0", "-n", "64", "-d", "128"]
    assert tg[:9] == pp[:9]


def test_parse_reads_pp_and_tg_tests_after_any_preamble():
    tests = [{"n_prompt": 128, "n_gen": 0, "avg_ts": 900.5}, {"n_prompt": 0, "n_gen": 64, "avg_ts": 80.25}]  # fmt: skip
    out = parse_tests("build: 1234 (abc)\n" + json.dumps(tests))
    assert out == {"prefill": 900.5, "decode": 80.25}


def test_run_against_a_fake_binary(tmp_path):
    binary, log = fake_binary(tmp_path)
    out = run_llama_bench(binary, tmp_path / "m.gguf", prompt=128, new=64, threads=2, reps=1)
    assert out == {"prefill": 228.0, "decode": 164.0}
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert [c[c.index("-d") + 1] if "-d" in c else None for c in calls] == [None, "128"]


def test_a_failing_binary_reports_its_last_error_line(tmp_path):
    binary, log = fake_binary(tmp_path)
    log.write_text("--fail\n")
    out = run_llama_bench(binary, tmp_path / "m.gguf", prompt=8, new=4, threads=1, reps=1)
    assert out == {"error": "error: failed to load model"}
