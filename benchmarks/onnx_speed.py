"""onnxruntime decode speed against PocketLM's native engine, at the S and M shapes (the issue's
goal: the ONNX file's decode tokens/s >= 0.8x native fp32), with the traced graph and int8.

    python benchmarks/onnx_speed.py                       # S and M, 1 and 2 threads, 5 rounds
    python benchmarks/onnx_speed.py --shapes S --threads 1 --rounds 3

One process per shape and thread count opens every variant (native fp32; ONNX fp32 fused, fp32
traced and int8 fused) and times them in interleaved rounds (a 128-token prompt, then 64 greedy
decode steps, engine/bench.timed_round), so a busy neighbour slows them all alike; medians and
their ratio to native are printed. Models are random (speed does not depend on the values) and
reused from --work.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

SHAPES = {
    "S": dict(dim=256, n_layers=8, n_heads=8, n_kv_heads=4, ffn_dim=1024, vocab_size=8192),
    "M": dict(dim=512, n_layers=8, n_heads=8, n_kv_heads=4, ffn_dim=1536, vocab_size=8192),
}
VARIANTS = ("native", "onnx_fp32", "onnx_fp32_traced", "onnx_int8")


def prepare(work: Path, shape: str, tokenizer: Path) -> dict[str, Path]:
    """The shape's model artifact and its three ONNX exports; reused when present."""
    from pocketlm.checkpoint.model_io import save_model
    from pocketlm.interop.onnx_export import export_onnx
    from pocketlm.model.config import ModelConfig
    from pocketlm.model.transformer import build_model

    d = work / shape
    paths = {"native": d / "fp32", "onnx_fp32": d / "onnx-fp32",
             "onnx_fp32_traced": d / "onnx-fp32-traced", "onnx_int8": d / "onnx-int8"}  # fmt: skip
    if not (paths["native"] / "manifest.json").exists():
        config = ModelConfig(max_seq_len=2048, tie_embeddings=True, **SHAPES[shape])
        save_model(paths["native"], build_model(config, seed=0), tokenizer, overwrite=True)
    exports = {"onnx_fp32": ("fp32", "auto"), "onnx_fp32_traced": ("fp32", "traced"),
               "onnx_int8": ("int8", "auto")}  # fmt: skip
    for name, (precision, graph) in exports.items():
        if not (paths[name] / "manifest.json").exists():
            export_onnx(paths["native"], paths[name], precision=precision, graph=graph, overwrite=True)  # fmt: skip
    return paths


def measure(paths: dict[str, str], threads: int, rounds: int) -> dict[str, float]:
    """Median decode tokens/s of each variant over interleaved rounds, in this process."""
    from pocketlm.engine.bench import open_bench, timed_round

    targets = {
        name: open_bench(path, threads=threads, backend="native" if name == "native" else "onnx")
        for name, path in paths.items()
    }
    for target in targets.values():
        timed_round(target)  # warm-up
    decode: dict[str, list[float]] = {name: [] for name in targets}
    for _ in range(rounds):
        for name, target in targets.items():
            _, seconds = timed_round(target)
            decode[name].append(target.new_tokens / seconds)
    return {name: statistics.median(v) for name, v in decode.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES))
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--work", type=Path, default=Path("/tmp/pocketlm-onnx-speed"))
    parser.add_argument("--tokenizer", type=Path, required=True, help="a tokenizer artifact")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:  # one measurement, in its own process
        spec = json.loads(args.child)
        print(json.dumps(measure(spec["paths"], spec["threads"], spec["rounds"])))
        return
    print("| shape | threads | " + " | ".join(f"{v} tok/s" for v in VARIANTS) + " | fp32 / native | traced / native | int8 / fp32 |")  # fmt: skip
    print("|---" * (len(VARIANTS) + 5) + "|")
    for shape in args.shapes:
        paths = {k: str(v) for k, v in prepare(args.work, shape, args.tokenizer).items()}
        for threads in args.threads:
            spec = json.dumps({"paths": paths, "threads": threads, "rounds": args.rounds})
            out = subprocess.run([sys.executable, __file__, "--tokenizer", str(args.tokenizer),
                                  "--child", spec], check=True, capture_output=True, text=True)  # fmt: skip
            tps = json.loads(out.stdout.strip().splitlines()[-1])
            cells = " | ".join(f"{tps[v]:.0f}" for v in VARIANTS)
            ratios = (tps["onnx_fp32"] / tps["native"], tps["onnx_fp32_traced"] / tps["native"],
                      tps["onnx_int8"] / tps["onnx_fp32"])  # fmt: skip
            print(f"| {shape} | {threads} | {cells} | " + " | ".join(f"{r:.2f}x" for r in ratios) + " |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
