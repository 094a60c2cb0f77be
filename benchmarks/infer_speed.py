"""Local inference speed on this machine: PocketLM's native engine vs llama.cpp vs transformers, at
the S / M / L shapes and every precision, measured interleaved in one run.

    python benchmarks/infer_speed.py                     # all shapes, 3 interleaved rounds
    python benchmarks/infer_speed.py --shapes S M --rounds 2 --json

Every measurement is a fresh process (cold start included): it loads the model, runs a 128-token
prompt and 64 greedy decode steps a few times and reports medians, the time from process start to
the first token, and its peak resident memory. llama.cpp runs through llama-cpp-python on the
GGUF files PocketLM exports (F32 / BF16 / Q8_0 / Q4_0 next to PocketLM's fp32 / bf16 / int8 /
int4); transformers runs LlamaForCausalLM from PocketLM's HF export with its KV cache.
Models are random-initialised (speed does not depend on the values).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

SHAPES = {
    "S": dict(dim=256, n_layers=8, n_heads=8, n_kv_heads=4, ffn_dim=1024, vocab_size=8192),
    "M": dict(dim=512, n_layers=8, n_heads=8, n_kv_heads=4, ffn_dim=1536, vocab_size=8192),
    "L": dict(dim=576, n_layers=30, n_heads=9, n_kv_heads=3, ffn_dim=1536, vocab_size=49152),
}
PRECISIONS = {"fp32": "f32", "bf16": "bf16", "int8": "q8_0", "int4": "q4_0"}  # ours -> llama.cpp
ANCHORS = {  # the llama.cpp / transformers decode tokens/s on this machine kind
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
DRAM_GBPS = (
    33.0  # read bandwidth with 2 threads, from the measurements on this machine kind
)

CHILD_POCKETLM = """
import json, sys, time
def peak_mb():  # VmHWM: this process's own peak (ru_maxrss would include the parent's, across exec)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
t_start = float(sys.argv[1])
from pocketlm.engine.load import open_backend
import numpy as np, resource, statistics
backend, tok = open_backend(sys.argv[2], backend="native", threads=int(sys.argv[3]), max_len=256)
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
llm = llama_cpp.Llama(model_path=sys.argv[2], n_ctx=256, n_batch=256, n_threads=int(sys.argv[3]), n_threads_batch=int(sys.argv[3]), verbose=False, logits_all=False)
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


def prepare(work: Path, shapes: list[str]) -> dict[str, dict[str, Path]]:
    """Models (float + bf16/int8/int4), GGUF files and HF exports for each shape; reused when present."""
    os.environ.setdefault("POCKETLM_NO_PROGRESS", "1")
    from pocketlm.checkpoint.model_io import save_model
    from pocketlm.compress.quantize import quantize_model_dir
    from pocketlm.data.build import build_corpus
    from pocketlm.interop.gguf_export import export_gguf
    from pocketlm.interop.hf_export import export_hf
    from pocketlm.model.config import ModelConfig
    from pocketlm.model.transformer import build_model
    from pocketlm.tokenizer.train import TokenizerConfig, train_tokenizer

    work.mkdir(parents=True, exist_ok=True)
    tok = work / "tokenizer"
    if not (tok / "manifest.json").exists():
        corpus = work / "corpus"
        if not (corpus / "manifest.json").exists():
            build_corpus(["stdlib"], corpus, overwrite=True)
        train_tokenizer(corpus, tok, TokenizerConfig(vocab_size=8192), overwrite=True)
    out: dict[str, dict[str, Path]] = {}
    for shape in shapes:
        d = work / shape
        paths = {"fp32": d / "fp32", "hf": d / "hf"}
        if not (paths["fp32"] / "manifest.json").exists():
            save_model(
                paths["fp32"],
                build_model(
                    ModelConfig(max_seq_len=2048, tie_embeddings=True, **SHAPES[shape]), seed=0
                ),
                tok,
                overwrite=True,
            )
        for scheme in ("bf16", "int8", "int4"):
            paths[scheme] = d / scheme
            if not (paths[scheme] / "manifest.json").exists():
                quantize_model_dir(paths["fp32"], paths[scheme], scheme, overwrite=True)
        for kind in ("f32", "f16", "bf16", "q8_0", "q4_0"):
            paths[f"gguf_{kind}"] = d / f"model-{kind}.gguf"
            if not paths[f"gguf_{kind}"].exists():
                export_gguf(paths["fp32"], paths[f"gguf_{kind}"], out_type=kind, overwrite=True)
        if not (paths["hf"] / "manifest.json").exists():
            export_hf(paths["fp32"], paths["hf"], overwrite=True)
        out[shape] = paths
    return out


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


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--shapes", nargs="+", default=list(SHAPES))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument(
        "--reps", type=int, default=3, help="prompt+decode repetitions inside each process"
    )
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workdir", default="/tmp/pocketlm-infer")
    p.add_argument("--skip", nargs="*", default=[], help="engines to skip: pocketlm llama hf")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    try:
        import llama_cpp  # noqa: F401

        have_llama = "llama" not in args.skip
    except ImportError:
        have_llama = False
        print(
            "llama-cpp-python is not installed: llama.cpp columns skipped (pip install llama-cpp-python)",
            file=sys.stderr,
        )
    paths = prepare(Path(args.workdir), args.shapes)
    common = [str(args.threads), str(args.prompt_tokens), str(args.new_tokens), str(args.reps)]
    jobs = []
    for shape in args.shapes:
        for ours, theirs in PRECISIONS.items():
            if "pocketlm" not in args.skip:
                jobs.append((shape, f"pocketlm {ours}", CHILD_POCKETLM, [str(paths[shape][ours])]))
            if have_llama:
                jobs.append(
                    (
                        shape,
                        f"llama.cpp {theirs.upper()}",
                        CHILD_LLAMA,
                        [str(paths[shape][f"gguf_{theirs}"])],
                    )
                )
        if have_llama:
            jobs.append((shape, "llama.cpp F16", CHILD_LLAMA, [str(paths[shape]["gguf_f16"])]))
        if "hf" not in args.skip:
            for prec in ("fp32", "bf16"):
                jobs.append(
                    (shape, f"transformers {prec}", CHILD_HF, [str(paths[shape]["hf"]), prec])
                )
    samples: dict[tuple[str, str], list[dict]] = {}
    for r in range(args.rounds):  # interleaved: every engine once per round
        for shape, name, code, extra in jobs:
            res = run_child(code, extra[0], *common, *extra[1:])
            samples.setdefault((shape, name), []).append(res)
            print(
                f"round {r + 1} {shape:<2} {name:<22} {json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in res.items() if k != 'profile'})}",
                file=sys.stderr,
                flush=True,
            )
    table = {}
    for (shape, name), runs in samples.items():
        ok = [x for x in runs if "error" not in x]
        if not ok:
            table.setdefault(shape, {})[name] = {"error": runs[-1]["error"]}
            continue
        med = {
            k: statistics.median(x[k] for x in ok) for k in ("prefill", "decode", "ttft", "rss_mb")
        }
        if "profile" in ok[0]:
            med["profile"] = ok[0]["profile"]
            med["isa"] = ok[0]["isa"]
        table.setdefault(shape, {})[name] = med
    report = {
        "meta": {
            "threads": args.threads,
            "prompt_tokens": args.prompt_tokens,
            "new_tokens": args.new_tokens,
            "rounds": args.rounds,
            "cpus": os.cpu_count(),
        },
        "results": table,
    }
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    (out / "infer_speed.json").write_text(json.dumps(report, indent=2))
    if args.json:
        print(json.dumps(report, indent=2))
        return
    for shape, rows in table.items():
        print(f"\n{shape}: {SHAPES[shape]}")
        print(
            f"  {'engine':<24}{'decode tok/s':>13}{'prefill tok/s':>15}{'ttft s':>8}{'peak MB':>9}"
        )
        for name, m in rows.items():
            if "error" in m:
                print(f"  {name:<24} error: {m['error']}")
                continue
            print(
                f"  {name:<24}{m['decode']:>13.1f}{m['prefill']:>15.1f}{m['ttft']:>8.2f}{m['rss_mb']:>9.0f}"
            )
        for ours, theirs in PRECISIONS.items():
            a, b = rows.get(f"pocketlm {ours}"), rows.get(f"llama.cpp {theirs.upper()}")
            hf = rows.get("transformers bf16" if ours == "bf16" else "transformers fp32")
            if a and "decode" in a:
                vs_llama = (
                    f"{a['decode'] / b['decode']:.2f}x llama.cpp" if b and "decode" in b else "-"
                )
                vs_hf = (
                    f"{a['decode'] / hf['decode']:.1f}x transformers"
                    if hf and "decode" in hf
                    else "-"
                )
                print(f"  {ours}: decode {vs_llama}, {vs_hf}")


if __name__ == "__main__":
    main()
