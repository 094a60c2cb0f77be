"""Local inference speed on this machine: PocketLM's native engine vs llama.cpp vs transformers, at
every shape and precision, measured interleaved in one run, with the machine it ran on.

    python benchmarks/infer_speed.py                     # S M L, 3 interleaved rounds
    python benchmarks/infer_speed.py --shapes S M --rounds 2 --json
    python benchmarks/infer_speed.py --shapes qwen0.5b llama1b moe moe-dense --prepare-only
    python benchmarks/infer_speed.py --shapes S --llama-bench /tmp/llama-build/bin/llama-bench

Shapes (infer_shapes.py): S, M, L (default), `moe` (8 experts, top-2) and `moe-dense` (its active
parameters, dense), `qwen0.5b` and `llama1b` (random weights in Qwen2.5-0.5B's and Llama-3.2-1B's
shapes, imported through `pocketlm import` from bf16 folders; their fp32 is the bf16 upcast). Every measurement is a
fresh process (cold start included): it loads the model, runs a 128-token prompt and 64 greedy
decode steps a few times and reports medians, the time from process start to the first token,
and its peak resident memory. llama.cpp runs through llama-cpp-python on the GGUF files PocketLM
exports (F32 / BF16 / Q8_0 / Q4_0 next to PocketLM's fp32 / bf16 / int8 / int4), and with
--llama-bench through llama.cpp's own llama-bench at equal work (`pp 128`, `tg 64 @ d 128`);
transformers runs the HF export (or an imported shape's HF source) with its KV cache; MoE
shapes have no transformers rows (export hf writes LlamaForCausalLM, which has no experts).
The machine (benchmarks/machine.py: CPU, flags, read bandwidth, matmul peak) is measured once per
run; each decode rate is also given as GB/s of weights read (weight_traffic.py says what counts)
and as a share of the measured read bandwidth at the run's thread count.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from infer_shapes import SHAPES, precisions, prepare, shape_facts
from llama_bench import run_llama_bench
from weight_traffic import bytes_per_token, gguf_sizes, safetensors_sizes, weight_gbs

DEFAULT_SHAPES = ["S", "M", "L"]
ANCHORS = {  # the issue's llama.cpp / transformers decode tokens/s on this machine kind
    "S": {
        "f32": 526,
        "f16": 698,
        "bf16": 966,
        "q8_0": 1265,
        "q4_0": 1085,
        "hf_fp32": 110,
        "hf_bf16": 130,
    },
    "M": {
        "f32": 177,
        "f16": 445,
        "bf16": 404,
        "q8_0": 630,
        "q4_0": 837,
        "hf_fp32": 57,
        "hf_bf16": 80,
    },
    "L": {"f32": 41, "f16": 92, "bf16": 85, "q8_0": 108, "q4_0": 154, "hf_fp32": 15, "hf_bf16": 18},
}

CHILD_POCKETLM = """
import json, sys, time
def peak_mb():  # VmHWM: this process's own peak (ru_maxrss would include the parent's, across exec)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
t_start = float(sys.argv[1])
from pocketlm.engine.load import open_backend
import numpy as np, resource, statistics
backend, tok = open_backend(sys.argv[2], backend="native", threads=int(sys.argv[3]), max_len=max(256, int(sys.argv[4]) + int(sys.argv[5]) + 1))
rng = np.random.default_rng(0)
prompt = rng.integers(8, tok.vocab_size, size=int(sys.argv[4])).tolist()
n_new, reps = int(sys.argv[5]), int(sys.argv[6])
pre, dec, ttft = [], [], None
for r in range(reps):
    backend.release(0)
    t0 = time.perf_counter(); token = int(np.argmax(backend.prefill(0, prompt))); pre.append(time.perf_counter() - t0)
    if ttft is None: ttft = time.time() - t_start
    if r == 0: backend.profile(True)
    t0 = time.perf_counter()
    for _ in range(n_new): token = int(np.argmax(backend.decode((0,), (token,))[0]))
    dec.append(time.perf_counter() - t0)
    if r == 0: prof = backend.profile(False)
print(json.dumps({"prefill": len(prompt) / statistics.median(pre), "decode": n_new / statistics.median(dec), "ttft": ttft,
                  "rss_mb": peak_mb(), "isa": backend.isa, "profile": prof}))
"""

CHILD_LLAMA = """
import json, sys, time
def peak_mb():  # VmHWM: this process's own peak (ru_maxrss would include the parent's, across exec)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
t_start = float(sys.argv[1])
import llama_cpp, numpy as np, resource, statistics
llm = llama_cpp.Llama(model_path=sys.argv[2], n_ctx=max(256, int(sys.argv[4]) + int(sys.argv[5]) + 1), n_batch=256, n_threads=int(sys.argv[3]), n_threads_batch=int(sys.argv[3]), verbose=False, logits_all=False)
rng = np.random.default_rng(0)
prompt = rng.integers(8, llm.n_vocab(), size=int(sys.argv[4])).tolist()
def last_logits():
    return np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(llm.n_vocab(),))
n_new, reps = int(sys.argv[5]), int(sys.argv[6])
pre, dec, ttft = [], [], None
for r in range(reps):
    llm.reset()
    t0 = time.perf_counter(); llm.eval(prompt); token = int(np.argmax(last_logits())); pre.append(time.perf_counter() - t0)
    if ttft is None: ttft = time.time() - t_start
    t0 = time.perf_counter()
    for _ in range(n_new):
        llm.eval([token]); token = int(np.argmax(last_logits()))
    dec.append(time.perf_counter() - t0)
print(json.dumps({"prefill": len(prompt) / statistics.median(pre), "decode": n_new / statistics.median(dec), "ttft": ttft,
                  "rss_mb": peak_mb()}))
"""

CHILD_HF = """
import json, sys, time
def peak_mb():  # VmHWM: this process's own peak (ru_maxrss would include the parent's, across exec)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
t_start = float(sys.argv[1])
import torch, resource, statistics
from transformers import AutoModelForCausalLM
torch.set_num_threads(int(sys.argv[3]))
dtype = torch.bfloat16 if sys.argv[7] == "bf16" else torch.float32
model = AutoModelForCausalLM.from_pretrained(sys.argv[2], dtype=dtype, local_files_only=True).eval()
g = torch.Generator().manual_seed(0)
prompt = torch.randint(8, model.config.vocab_size, (1, int(sys.argv[4])), generator=g)
n_new, reps = int(sys.argv[5]), int(sys.argv[6])
pre, dec, ttft = [], [], None
with torch.inference_mode():
    for r in range(reps):
        t0 = time.perf_counter(); out = model(prompt, use_cache=True); token = out.logits[:, -1].argmax(-1, keepdim=True); past = out.past_key_values
        pre.append(time.perf_counter() - t0)
        if ttft is None: ttft = time.time() - t_start
        t0 = time.perf_counter()
        for _ in range(n_new):
            out = model(token, past_key_values=past, use_cache=True); past = out.past_key_values; token = out.logits[:, -1].argmax(-1, keepdim=True)
        dec.append(time.perf_counter() - t0)
print(json.dumps({"prefill": prompt.shape[1] / statistics.median(pre), "decode": n_new / statistics.median(dec), "ttft": ttft,
                  "rss_mb": peak_mb()}))
"""


Job = tuple[str, str, Callable[[], dict], Callable[[], dict[str, int]]]  # shape, engine, run, sizes


def run_child(code: str, *args: str) -> dict:
    """Run one measurement in a fresh process; the first argument is the start timestamp."""
    t_start = time.time()
    proc = subprocess.run(
        [sys.executable, "-c", code, repr(t_start), *args],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def build_jobs(args: argparse.Namespace, paths: dict, have_llama: bool) -> list[Job]:
    """Every (shape, engine) measurement of the run, with where its weight sizes come from."""
    common = [str(args.threads), str(args.prompt_tokens), str(args.new_tokens), str(args.reps)]
    bench = dict(prompt=args.prompt_tokens, new=args.new_tokens, threads=args.threads, reps=args.reps)  # fmt: skip
    jobs: list[Job] = []
    for shape in args.shapes:
        p = paths[shape]
        for ours, theirs in [*precisions(shape).items(), (None, "f16")]:
            if (ours or theirs) not in args.precisions:
                continue
            gguf = p[f"gguf_{theirs}"]
            if ours and "pocketlm" not in args.skip:
                run = partial(run_child, CHILD_POCKETLM, str(p[ours]), *common)
                jobs.append((shape, f"pocketlm {ours}", run, partial(safetensors_sizes, p[ours])))
            if have_llama:
                run = partial(run_child, CHILD_LLAMA, str(gguf), *common)
                jobs.append((shape, f"llama.cpp {theirs.upper()}", run, partial(gguf_sizes, gguf)))
            if args.llama_bench:
                run = partial(run_llama_bench, args.llama_bench, gguf, **bench)
                jobs.append((shape, f"llama-bench {theirs.upper()}", run, partial(gguf_sizes, gguf)))  # fmt: skip
        if "hf" not in args.skip and "hf" in p:
            for prec, itemsize in (("fp32", 4), ("bf16", 2)):
                run = partial(run_child, CHILD_HF, str(p["hf"]), *common, prec)
                sizes = partial(safetensors_sizes, p["hf"], itemsize)
                jobs.append((shape, f"transformers {prec}", run, sizes))
    return jobs


def summarize(samples: dict[tuple[str, str], list[dict]]) -> dict[str, dict[str, dict]]:
    """{shape: {engine: medians over rounds (or the last error)}}."""
    table: dict[str, dict[str, dict]] = {}
    for (shape, name), runs in samples.items():
        ok = [x for x in runs if "error" not in x]
        if not ok:
            table.setdefault(shape, {})[name] = {"error": runs[-1]["error"]}
            continue
        keys = [k for k in ("prefill", "decode", "ttft", "rss_mb") if k in ok[0]]
        med: dict = {k: statistics.median(x[k] for x in ok) for k in keys}
        if "profile" in ok[0]:
            med["profile"] = ok[0]["profile"]
            med["isa"] = ok[0]["isa"]
        table.setdefault(shape, {})[name] = med
    return table


def read_bandwidth(machine: dict, threads: int) -> float | None:
    """The machine's measured read GB/s at `threads` threads (the best measured if not that)."""
    if f"read_gbs_{threads}_threads" in machine:
        return machine[f"read_gbs_{threads}_threads"]
    if threads == 1:
        return machine.get("read_gbs_1_thread")
    return max((v for k, v in machine.items() if k.startswith("read_gbs_")), default=None)


def add_traffic(table: dict, jobs: list[Job], read_gbs: float | None) -> None:
    """Each measured row gets weight bytes per token, the GB/s they imply and % of read_gbs."""
    for shape, name, _, sizes in jobs:
        row = table.get(shape, {}).get(name, {})
        if "decode" not in row:
            continue
        facts = shape_facts(shape)
        n, k = facts["experts"]
        row["weight_bytes_per_token"] = bytes_per_token(sizes(), facts["vocab_size"], n, k)
        gbs, pct = weight_gbs(row["weight_bytes_per_token"], row["decode"], read_gbs)
        row["weights_gbs"], row["pct_read_bw"] = round(gbs, 2), pct and round(pct, 1)


def _num(row: dict, key: str, fmt: str, width: int) -> str:
    return f"{row[key]:>{width}{fmt}}" if row.get(key) is not None else f"{'-':>{width}}"


def print_report(report: dict) -> None:
    """The machine, then per shape a row per engine and PocketLM's ratios."""
    table, machine = report["results"], report["machine"]
    print("machine: " + json.dumps(machine))
    print(f"read bandwidth compared against: {report['meta']['read_gbs']} GB/s")
    for shape, rows in table.items():
        print(f"\n{shape}: {shape_facts(shape)['config']}")
        head = (
            f"  {'engine':<24}{'decode tok/s':>13}{'prefill tok/s':>15}{'ttft s':>8}{'peak MB':>9}"
        )
        print(head + f"{'MB/token':>10}{'GB/s':>7}{'% read':>8}")
        for name, m in rows.items():
            if "error" in m:
                print(f"  {name:<24} error: {m['error']}")
                continue
            mb = {"mb": m["weight_bytes_per_token"] / 1e6} if "weight_bytes_per_token" in m else {}
            print(
                f"  {name:<24}{_num(m, 'decode', '.1f', 13)}{_num(m, 'prefill', '.1f', 15)}"
                f"{_num(m, 'ttft', '.2f', 8)}{_num(m, 'rss_mb', '.0f', 9)}{_num(mb, 'mb', '.1f', 10)}"
                f"{_num(m, 'weights_gbs', '.1f', 7)}{_num(m, 'pct_read_bw', '.0f', 8)}"
            )
        for ours, theirs in precisions(shape).items():
            a = rows.get(f"pocketlm {ours}", {})
            if "decode" not in a:
                continue
            others = [f"llama.cpp {theirs.upper()}", f"llama-bench {theirs.upper()}"]
            others.append("transformers bf16" if ours == "bf16" else "transformers fp32")
            ratios = [f"{a['decode'] / rows[o]['decode']:.2f}x {o}" for o in others if "decode" in rows.get(o, {})]  # fmt: skip
            print(f"  {ours}: decode " + (", ".join(ratios) or "-"))
    if "moe" in table and "moe-dense" in table:  # the issue's goal: MoE >= 0.8x its active dense
        print("\nmoe / moe-dense decode (goal >= 0.8x):")
        for name, m in table["moe"].items():
            dense = table["moe-dense"].get(name, {})
            if "decode" in m and "decode" in dense:
                print(f"  {name:<24}{m['decode'] / dense['decode']:.2f}x")


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--shapes", nargs="+", default=DEFAULT_SHAPES, choices=SHAPES)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument(
        "--reps", type=int, default=3, help="prompt+decode repetitions inside each process"
    )
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--precisions", nargs="+", default=["fp32", "bf16", "int8", "int4", "f16"],
        choices=["fp32", "bf16", "int8", "int4", "f16"],
        help="PocketLM precisions measured, each against its llama.cpp type (f16: llama.cpp's "
        "F16 row alone); default: all",
    )  # fmt: skip
    p.add_argument("--workdir", default="/tmp/pocketlm-infer")
    p.add_argument("--skip", nargs="*", default=[], help="engines to skip: pocketlm llama hf")
    p.add_argument(
        "--llama-bench", type=Path, help="a llama-bench binary: llama.cpp rows from it too"
    )
    p.add_argument("--prepare-only", action="store_true", help="build the models, measure nothing")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    paths = prepare(Path(args.workdir), args.shapes)
    if args.prepare_only:
        for shape, files in paths.items():
            print(shape, json.dumps({k: str(v) for k, v in files.items()}))
        return
    if args.llama_bench and not args.llama_bench.is_file():
        p.error(f"--llama-bench {args.llama_bench}: no such file")
    try:
        import llama_cpp  # noqa: F401

        have_llama = "llama" not in args.skip
    except ImportError:
        have_llama = False
        print(
            "llama-cpp-python is not installed: llama.cpp columns skipped (pip install llama-cpp-python)",
            file=sys.stderr,
        )
    from machine import describe_machine

    machine = describe_machine()  # before the runs, on an idle process: one measurement per run
    print("machine: " + json.dumps(machine), file=sys.stderr, flush=True)
    jobs = build_jobs(args, paths, have_llama)
    samples: dict[tuple[str, str], list[dict]] = {}
    for r in range(args.rounds):  # interleaved: every engine once per round
        for shape, name, run, _ in jobs:
            res = run()
            samples.setdefault((shape, name), []).append(res)
            shown = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in res.items() if k != "profile"}  # fmt: skip
            print(f"round {r + 1} {shape:<2} {name:<22} {json.dumps(shown)}", file=sys.stderr, flush=True)  # fmt: skip
    table = summarize(samples)
    read_gbs = read_bandwidth(machine, args.threads)
    add_traffic(table, jobs, read_gbs)
    report = {
        "machine": machine,
        "meta": {
            "threads": args.threads,
            "prompt_tokens": args.prompt_tokens,
            "new_tokens": args.new_tokens,
            "rounds": args.rounds,
            "reps": args.reps,
            "read_gbs": read_gbs,
        },
        "results": table,
    }
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    (out / "infer_speed.json").write_text(json.dumps(report, indent=2))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)


if __name__ == "__main__":
    main()
