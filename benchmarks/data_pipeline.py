"""Benchmark the data stages on this machine: corpus build MB/s (and peak memory on a 1 GB
corpus), tokenizer training time on 100 MB, encoding MB/s.

    python benchmarks/data_pipeline.py --size-mb 1000 --workdir /tmp/pocketlm-bench

The synthetic corpus is made of sentences drawn from real text (TinyStories in ../shared/data
when present, else the Python stdlib docs), shuffled into unique documents, written as jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("POCKETLM_NO_PROGRESS", "1")


def sentence_pool() -> list[str]:
    shared = (
        Path(__file__).resolve().parents[1].parent
        / "shared"
        / "data"
        / "tinystories-train-excerpt-lowercase.txt"
    )
    if shared.is_file():
        text = shared.read_text(encoding="utf-8")
    else:
        from pydoc_data.topics import topics

        text = "\n".join(topics.values())
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if 20 < len(s.strip()) < 400]


def make_jsonl(path: Path, size_mb: int, seed: int = 0) -> None:
    pool = sentence_pool()
    rng = random.Random(seed)
    target = size_mb * 1_000_000
    written = 0
    with path.open("w", encoding="utf-8") as fh:
        while written < target:
            doc = " ".join(rng.choice(pool) for _ in range(rng.randint(10, 60)))
            line = json.dumps({"text": doc}) + "\n"
            fh.write(line)
            written += len(line)


def peak_rss_mb() -> tuple[float, float]:
    """(this process, largest child) peak resident memory in MB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return own, child


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--size-mb", type=int, default=1000, help="size of the big synthetic corpus"
    )
    parser.add_argument("--tokenizer-mb", type=int, default=100)
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--workdir", default="/tmp/pocketlm-bench")
    parser.add_argument(
        "--skip-big", action="store_true", help="only the 100 MB and stdlib measurements"
    )
    args = parser.parse_args()

    from pocketlm.data.build import build_corpus
    from pocketlm.data.encode import encode_corpus
    from pocketlm.tokenizer.train import TokenizerConfig, train_tokenizer

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, object] = {"cpus": os.cpu_count(), "python": sys.version.split()[0]}

    def timed(name, fn):
        t0 = time.perf_counter()
        out = fn()
        dt = time.perf_counter() - t0
        print(f"{name}: {dt:.1f} s", flush=True)
        return out, dt

    # 1. Real text: the stdlib source.
    for d in ("std-corpus", "std-tok", "std-tokens"):
        shutil.rmtree(work / d, ignore_errors=True)
    std, dt = timed("stdlib build", lambda: build_corpus(["stdlib"], work / "std-corpus"))
    s = json.loads((std / "manifest.json").read_text())["summary"]
    results["stdlib_build"] = {
        "mb": round(s["bytes_read"] / 1e6, 1),
        "seconds": round(dt, 1),
        "mb_per_s": round(s["bytes_read"] / 1e6 / dt, 2),
    }

    # 2. 100 MB synthetic: tokenizer training and encoding.
    small = work / f"synthetic-{args.tokenizer_mb}mb.jsonl"
    if not small.exists():
        timed(
            f"make {args.tokenizer_mb} MB jsonl",
            lambda: make_jsonl(small, args.tokenizer_mb, seed=1),
        )
    for d in ("c100", "t100", "k100"):
        shutil.rmtree(work / d, ignore_errors=True)
    c100, dt = timed("build 100 MB", lambda: build_corpus([str(small)], work / "c100"))
    results["build_100mb"] = {
        "seconds": round(dt, 1),
        "mb_per_s": round(small.stat().st_size / 1e6 / dt, 2),
    }
    t100, dt = timed(
        "tokenizer train 100 MB",
        lambda: train_tokenizer(c100, work / "t100", TokenizerConfig(vocab_size=args.vocab_size)),
    )
    results["tokenizer_train_100mb"] = {"seconds": round(dt, 1), "vocab_size": args.vocab_size}
    _, dt = timed("encode 100 MB", lambda: encode_corpus(c100, t100, work / "k100"))
    train_bytes = json.loads((c100 / "manifest.json").read_text())["summary"]["splits"]
    total = train_bytes["train"]["bytes"] + train_bytes["val"]["bytes"]
    results["encode_100mb"] = {"seconds": round(dt, 1), "mb_per_s": round(total / 1e6 / dt, 2)}

    # 3. The big corpus: streaming build with bounded memory.
    if not args.skip_big:
        big = work / f"synthetic-{args.size_mb}mb.jsonl"
        if not big.exists():
            timed(f"make {args.size_mb} MB jsonl", lambda: make_jsonl(big, args.size_mb, seed=2))
        shutil.rmtree(work / "cbig", ignore_errors=True)
        _, dt = timed(f"build {args.size_mb} MB", lambda: build_corpus([str(big)], work / "cbig"))
        own, child = peak_rss_mb()
        results["build_big"] = {
            "mb": round(big.stat().st_size / 1e6),
            "seconds": round(dt, 1),
            "mb_per_s": round(big.stat().st_size / 1e6 / dt, 2),
            "peak_rss_main_mb": round(own),
            "peak_rss_worker_mb": round(child),
        }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
