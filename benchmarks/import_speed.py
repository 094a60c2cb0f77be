"""Start from an existing model: `pocketlm import` time and peak memory on ~1 GB Hugging Face
folders (random weights in SmolLM2-135M and Qwen2.5-0.5B shapes, from hf_folders.py), against
transformers' own `from_pretrained`; then decode and prefill tokens/s of the imported model on
PocketLM's native engine against llama.cpp on the GGUF PocketLM exported from it, at each
precision. Every measurement is a fresh process; rounds are interleaved.

    python benchmarks/hf_folders.py --out /tmp/hfbench --tokenizer TOKDIR smollm2-135m qwen2.5-0.5b
    python benchmarks/import_speed.py --folders /tmp/hfbench/smollm2-135m /tmp/hfbench/qwen2.5-0.5b
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from infer_speed import CHILD_LLAMA, CHILD_POCKETLM, run_child
from machine import describe_machine

# ours -> the GGUF type llama.cpp runs for it
PRECISIONS = {"bf16": "bf16", "int8": "q8_0", "int4": "q4_0"}

# Each child prints its own peak (VmHWM: exec starts a new address space, while wait4's
# ru_maxrss would carry the parent's peak across fork and exec).
PEAK = "print(next(int(l.split()[1]) // 1024 for l in open('/proc/self/status') if l.startswith('VmHWM')))"
CHILD_IMPORT = f"""
import runpy, sys
sys.argv = ["pocketlm", "-q", "import", sys.argv[1], "--out", sys.argv[2]]
try:
    runpy.run_module("pocketlm", run_name="__main__")
except SystemExit as e:
    assert not e.code, e.code
{PEAK}
"""
CHILD_HF_LOAD = f"""
import sys
from transformers import AutoModelForCausalLM
AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype="auto", local_files_only=True)
{PEAK}
"""


def measure_import(folder: Path, rounds: int, env: dict) -> dict:
    """Median seconds and peak RSS of `pocketlm import` and of transformers' from_pretrained."""
    rows: dict[str, list[dict]] = {"pocketlm import": [], "transformers from_pretrained": []}
    for _ in range(rounds):
        out = Path(tempfile.mkdtemp(prefix="import-")) / "m"
        for name, cmd in (
            ("pocketlm import", [sys.executable, "-c", CHILD_IMPORT, str(folder), str(out)]),
            ("transformers from_pretrained", [sys.executable, "-c", CHILD_HF_LOAD, str(folder)]),
        ):
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            seconds = time.perf_counter() - t0
            peak = int(proc.stdout.strip().splitlines()[-1])
            rows[name].append({"seconds": seconds, "peak_mb": peak})
        shutil.rmtree(out.parent)
    return {
        name: {k: round(statistics.median(r[k] for r in runs), 2) for k in ("seconds", "peak_mb")}
        for name, runs in rows.items()
    }


def prepare(folder: Path, work: Path) -> dict[str, Path]:
    """The imported model, its int8/int4 quantizations and the GGUF files exported from them."""
    from pocketlm.compress.quantize import quantize_model_dir
    from pocketlm.interop.gguf_export import export_gguf
    from pocketlm.interop.hf_import import import_hf

    paths = {"bf16": work / "bf16"}
    if not (paths["bf16"] / "manifest.json").exists():
        import_hf(folder, paths["bf16"], overwrite=True)
    for scheme in ("int8", "int4"):
        paths[scheme] = work / scheme
        if not (paths[scheme] / "manifest.json").exists():
            quantize_model_dir(paths["bf16"], paths[scheme], scheme, overwrite=True)
    for kind in PRECISIONS.values():
        paths[f"gguf_{kind}"] = work / f"model-{kind}.gguf"
        if not paths[f"gguf_{kind}"].exists():
            export_gguf(paths["bf16"], paths[f"gguf_{kind}"], out_type=kind, overwrite=True)
    return paths


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--folders", nargs="+", type=Path, required=True)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/pocketlm-import-bench"))
    p.add_argument("--skip-speed", action="store_true")
    args = p.parse_args()
    env = {**os.environ, "POCKETLM_NO_PROGRESS": "1"}
    report: dict = {"machine": describe_machine(), "threads": args.threads, "models": {}}
    for folder in args.folders:
        size = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
        entry = {"folder_bytes": size, "import": measure_import(folder, args.rounds, env)}
        print(folder.name, json.dumps(entry), flush=True)
        report["models"][folder.name] = entry
    if not args.skip_speed:
        common = [str(args.threads), "128", "64", "3"]
        jobs = []
        for folder in args.folders:
            paths = prepare(folder, args.workdir / folder.name)
            for ours, theirs in PRECISIONS.items():
                jobs.append((folder.name, f"pocketlm {ours}", CHILD_POCKETLM, str(paths[ours])))
                jobs.append((folder.name, f"llama.cpp {theirs.upper()}", CHILD_LLAMA, str(paths[f"gguf_{theirs}"])))  # fmt: skip
        samples: dict[tuple[str, str], list[dict]] = {}
        for r in range(args.rounds):
            for model, name, code, path in jobs:
                res = run_child(code, path, *common)
                res.pop("profile", None)
                samples.setdefault((model, name), []).append(res)
                print(f"round {r + 1} {model} {name} {json.dumps(res)}", flush=True)
        for (model, name), runs in samples.items():
            ok = [x for x in runs if "error" not in x]
            report["models"][model].setdefault("speed", {})[name] = (
                {k: round(statistics.median(x[k] for x in ok), 1) for k in ("prefill", "decode", "rss_mb")}
                if ok else {"error": runs[-1]["error"]}
            )  # fmt: skip
    dest = Path(__file__).parent / "results" / "import_speed.json"
    dest.write_text(json.dumps(report, indent=2) + "\n")
    print(dest)


if __name__ == "__main__":
    main()
