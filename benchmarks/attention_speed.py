"""Causal attention, forward + backward, on the CPU: PocketLM's kernels vs PyTorch's SDPA flash kernel.

    python benchmarks/attention_speed.py            # the training shapes of train_speed.py + hd 64

One layer's attention of a training step (batch 16 x 256 tokens), fp32, every thread torch uses;
the two kernels alternate round after round and the medians are reported. GFLOP/s counts the
causal half of each product: 2 products forward, 5 backward (scores again, dP, dQ, dK, dV).
Results: benchmarks/results/attention_speed.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from pocketlm.model import native_attention

SHAPES = {  # name: (batch, seq, heads, head_dim)
    "c1 (4 heads x 32)": (16, 256, 4, 32),
    "c2 (8 heads x 32)": (16, 256, 8, 32),
    "9 heads x 64 (SmolLM-135M's heads)": (16, 256, 9, 64),
}


def _time_ms(fn: Callable[[], None], reps: int) -> float:
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps * 1000


def measure(batch: int, seq: int, heads: int, hd: int, rounds: int, reps: int) -> dict:
    """Median ms of forward and of forward + backward for both kernels at one shape."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(batch, seq, heads, hd, generator=gen) for _ in range(3))
    grad = torch.randn(batch, seq, heads, hd, generator=gen)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]

    def sdpa(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(
            a.transpose(1, 2), b.transpose(1, 2), c.transpose(1, 2), is_causal=True
        ).transpose(1, 2)  # (B, T, H, hd), as the model lays it out

    kernels = {"pocketlm": native_attention.causal_attention, "sdpa": sdpa}
    runs: dict[str, dict[str, list[float]]] = {n: {"fwd": [], "fwd_bwd": []} for n in kernels}
    for _ in range(rounds):
        for name, fn in kernels.items():
            with torch.no_grad():
                fn(q, k, v)  # warm
                runs[name]["fwd"].append(_time_ms(lambda fn=fn: fn(q, k, v), reps))
            runs[name]["fwd_bwd"].append(_time_ms(lambda fn=fn: fn(*leaves).backward(grad), reps))
    product_flops = batch * heads * seq * seq * hd  # one causal (T x T x hd) product: 2 * half
    out: dict = {}
    for name, r in runs.items():
        fwd, both = statistics.median(r["fwd"]), statistics.median(r["fwd_bwd"])
        out[name] = {
            "fwd_ms": round(fwd, 2),
            "fwd_bwd_ms": round(both, 2),
            "fwd_bwd_gflops": round(7 * product_flops / both / 1e6, 1),
        }
    out["speedup_fwd_bwd"] = round(out["sdpa"]["fwd_bwd_ms"] / out["pocketlm"]["fwd_bwd_ms"], 2)
    out["speedup_fwd"] = round(out["sdpa"]["fwd_ms"] / out["pocketlm"]["fwd_ms"], 2)
    return out


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--reps", type=int, default=10)
    args = p.parse_args()
    if not native_attention.available():
        raise SystemExit("PocketLM's attention kernels need an AVX-512 CPU and the built extension")
    results = {}
    for name, shape in SHAPES.items():
        results[name] = r = measure(*shape, args.rounds, args.reps)
        print(
            f"{name:<36} forward+backward: pocketlm {r['pocketlm']['fwd_bwd_ms']:.2f} ms "
            f"({r['pocketlm']['fwd_bwd_gflops']} GFLOP/s), sdpa {r['sdpa']['fwd_bwd_ms']:.2f} ms "
            f"({r['sdpa']['fwd_bwd_gflops']}) -> {r['speedup_fwd_bwd']}x; "
            f"forward alone {r['speedup_fwd']}x"
        )
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    path = Path(__file__).resolve().parent / "results" / "attention_speed.json"
    path.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
