"""Quality per CPU-minute: pretrain on the TinyStories excerpt for a wall-clock budget and report
validation bits per byte on the whole held-out 10%.

    python benchmarks/train_quality.py --name c1 --layers 4 --dim 128 --heads 4 --budget 10m
    python benchmarks/train_quality.py --name muon --preset micro-6m --set train.optim.kind=muon

Compilation and evaluation count against the budget (it is the training loop's own budget).
Results are appended to benchmarks/results/train_quality.jsonl; the loss curve is copied to
benchmarks/results/<name>-loss.png.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("POCKETLM_NO_PROGRESS", "1")

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    from tinystories import prepare

    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--name", required=True)
    p.add_argument("--workdir", default="/tmp/pocketlm-quality")
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--preset")
    p.add_argument("--layers", type=int)
    p.add_argument("--dim", type=int)
    p.add_argument("--heads", type=int)
    p.add_argument("--kv-heads", type=int)
    p.add_argument("--ffn-dim", type=int)
    p.add_argument("--budget", default="10m")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--ctx", type=int, default=256)
    p.add_argument("--set", action="append", default=[])
    args = p.parse_args()

    from pocketlm.common.config import load_config
    from pocketlm.common.log import setup_logging
    from pocketlm.evals.evaluate import evaluate_model
    from pocketlm.train.tasks.pretrain import PretrainConfig, pretrain

    setup_logging()
    tokens = prepare(args.workdir, args.vocab_size)
    flags = {
        "model.preset": args.preset,
        "model.n_layers": args.layers,
        "model.dim": args.dim,
        "model.n_heads": args.heads,
        "model.n_kv_heads": args.kv_heads,
        "model.ffn_dim": args.ffn_dim,
        "train.budget": args.budget,
        "train.batch_size": args.batch_size,
        "train.ctx": args.ctx,
        "train.eval_tokens": 32768,
        "train.checkpoint_every_s": 10**9,
    }
    config = load_config(PretrainConfig, flags=flags, overrides=args.set)
    run = Path(args.workdir) / "runs" / args.name
    shutil.rmtree(run, ignore_errors=True)
    t0 = time.perf_counter()
    result = pretrain(tokens, run, config)
    wall = time.perf_counter() - t0
    full = evaluate_model(result.model_dir, tokens, max_tokens=10**9, ctx=args.ctx, device="cpu")
    manifest = json.loads((result.model_dir / "manifest.json").read_text())
    row = {
        "name": args.name,
        "budget": args.budget,
        "params": manifest["summary"]["params"],
        "tokens": result.tokens,
        "steps": result.steps,
        "train_seconds": round(result.seconds, 1),
        "wall_seconds": round(wall, 1),
        "tokens_per_s": result.tokens_per_s,
        "val_bpb_full": round(full["bpb"], 4),
        "val_loss_full": round(full["loss"], 4),
        "val_tokens": full["tokens"],
        "model": manifest["summary"]["model"],
        "overrides": args.set,
    }
    RESULTS.mkdir(exist_ok=True)
    with (RESULTS / "train_quality.jsonl").open("a") as fh:
        fh.write(json.dumps(row) + "\n")
    shutil.copyfile(run / "loss.png", RESULTS / f"{args.name}-loss.png")
    print(json.dumps(row, indent=2))


if __name__ == "__main__":
    main()
