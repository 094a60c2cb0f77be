"""Attention over packed rows on the CPU, forward + backward: PocketLM's document-aware kernels vs
SDPA with a block-diagonal causal mask vs plain causal attention over the whole row.

    python benchmarks/packed_attention.py

Rows of fine-tuning examples packed one after another (lengths drawn from 32..max_doc tokens),
fp32, every thread torch uses; the variants alternate round after round and medians are
reported. "plain causal" lets examples see each other (wrong for packing): it is the cost of
the row as one sequence, the reference the document-aware kernels should beat. Results:
benchmarks/results/packed_attention.json.
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
from pocketlm.model.attention import document_starts

SHAPES = {  # name: (batch, seq, heads, head_dim, longest example)
    "8 heads x 32, 1024 tokens, examples of 32-256": (8, 1024, 8, 32, 256),
    "9 heads x 64, 1024 tokens, examples of 32-256": (8, 1024, 9, 64, 256),
    "8 heads x 32, 2048 tokens, examples of 32-1024": (4, 2048, 8, 32, 1024),
}


def _time_ms(fn: Callable[[], None], reps: int) -> float:
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps * 1000


def _doc_ids(batch: int, seq: int, longest: int, gen: torch.Generator) -> torch.Tensor:
    rows = []
    for _ in range(batch):
        lengths = torch.randint(32, longest + 1, (seq // 32 + 1,), generator=gen)
        rows.append(torch.repeat_interleave(torch.arange(len(lengths)), lengths)[:seq])
    return torch.stack(rows)  # (B, T)


def measure(
    batch: int, seq: int, heads: int, hd: int, longest: int, rounds: int, reps: int
) -> dict:
    """Median ms of forward + backward of each variant at one shape."""
    gen = torch.Generator().manual_seed(0)
    leaves = [torch.randn(batch, seq, heads, hd, generator=gen).requires_grad_() for _ in range(3)]
    grad = torch.randn(batch, seq, heads, hd, generator=gen)
    starts = document_starts(_doc_ids(batch, seq, longest, gen))
    position = torch.arange(seq)
    visible = (position[None, :] <= position[:, None])[None] & (
        position[None, None, :] >= starts[:, :, None]
    )  # (B, T, T)

    def sdpa_masked(a, b, c):
        return F.scaled_dot_product_attention(
            a.transpose(1, 2), b.transpose(1, 2), c.transpose(1, 2), attn_mask=visible[:, None]
        ).transpose(1, 2)

    variants = {
        "pocketlm, documents": lambda a, b, c: native_attention.causal_attention(a, b, c, starts),
        "sdpa, block-diagonal mask": sdpa_masked,
        "pocketlm, plain causal": native_attention.causal_attention,
    }
    runs: dict[str, list[float]] = {n: [] for n in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            fn(*leaves).backward(grad)  # warm
            runs[name].append(_time_ms(lambda fn=fn: fn(*leaves).backward(grad), reps))
    doc_pairs = int(((starts[:, :, None] <= position[None, None, :]) & visible).sum())
    out = {name: {"fwd_bwd_ms": round(statistics.median(r), 2)} for name, r in runs.items()}
    out["visible_share_of_causal"] = round(doc_pairs / (batch * seq * (seq + 1) / 2), 3)
    base = out["pocketlm, documents"]["fwd_bwd_ms"]
    out["speedup_vs_sdpa_mask"] = round(out["sdpa, block-diagonal mask"]["fwd_bwd_ms"] / base, 2)
    out["speedup_vs_plain_causal"] = round(out["pocketlm, plain causal"]["fwd_bwd_ms"] / base, 2)
    return out


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--reps", type=int, default=3)
    args = p.parse_args()
    if not native_attention.available():
        raise SystemExit("PocketLM's attention kernels need AVX-512 on this machine")
    results = {
        "threads": torch.get_num_threads(),
        "shapes": {name: measure(*shape, args.rounds, args.reps) for name, shape in SHAPES.items()},
    }
    print(json.dumps(results, indent=2))
    out = Path(__file__).parent / "results" / "packed_attention.json"
    out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
