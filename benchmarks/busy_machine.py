"""Training and decoding while another program keeps one core busy, against the idle machine.

A laptop runs other programs. This measures PocketLM's training step (the loop's own, as
`pocketlm pretrain` runs it) and native decoding with the default thread choice (the cores other
programs leave free) and with every core forced (the old behaviour), idle and next to one
spinning process, interleaved round by round. Goal: with one busy process, at least 40 % of the
idle tokens/s (an ideal share of one free core of two is 50 %).

    python benchmarks/busy_machine.py            # writes results/busy_machine.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("POCKETLM_NO_PROGRESS", "1")

TRAIN_SHAPE = dict(dim=128, n_layers=4, n_heads=4)  # c1 of train_speed.py
DECODE_SHAPE = dict(dim=256, n_layers=6, n_heads=8)  # M-ish
VOCAB, CTX, BATCH = 4096, 256, 16


def _spinner() -> subprocess.Popen:
    """Another program: one Python process that keeps a core busy."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def train_tokens_per_s(threads: int, steps: int) -> float:
    """Tokens/s of the loop's step over `steps` steps after 2 warm-up steps, eager, fp32."""
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from pocketlm.model.config import ModelConfig
    from pocketlm.model.transformer import build_model
    from pocketlm.train.config import TrainConfig
    from pocketlm.train.run import setup_run
    from pocketlm.train.step import optimizer_step
    from train_speed import _batch_task

    config = ModelConfig(vocab_size=VOCAB, max_seq_len=CTX, n_kv_heads=4, **TRAIN_SHAPE)
    train_config = TrainConfig(
        batch_size=BATCH, ctx=CTX, budget="1000000 steps", precision="fp32", device="cpu",
        compile="off", threads=threads,
    )  # fmt: skip
    run = setup_run(
        _batch_task(build_model(config)), train_config, Path(tempfile.mkdtemp()),
        resume=False, command=None, now=time.perf_counter,
    )  # fmt: skip
    for _ in range(2):
        optimizer_step(run)
    t0 = time.perf_counter()
    for _ in range(steps):
        optimizer_step(run)
    seconds = time.perf_counter() - t0
    print(f"    train threads={torch.get_num_threads()}", file=sys.stderr)
    return BATCH * CTX * steps / seconds


def decode_tokens_per_s(model_dir: str, threads: int, tokens: int) -> float:
    """Native decode tokens/s after a 16-token prompt (greedy, fixed length)."""
    import numpy as np

    from pocketlm.engine.load import open_backend

    backend, _ = open_backend(model_dir, backend="native", device="cpu", threads=threads)
    logits = backend.prefill(0, list(range(3, 19)))
    t0 = time.perf_counter()
    for _ in range(tokens):
        logits = backend.decode([0], [int(np.argmax(logits))])[0]
    seconds = time.perf_counter() - t0
    print(f"    decode threads={backend.threads}", file=sys.stderr)
    return tokens / seconds


def _measure(kind: str, threads: int, model_dir: str, steps: int) -> float:
    """One measurement in a fresh process (its thread choice is made at start, as a user's)."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import busy_machine as b; "
        "print(b.train_tokens_per_s(int(sys.argv[3]), int(sys.argv[5])) if sys.argv[2] == 'train' "
        "else b.decode_tokens_per_s(sys.argv[4], int(sys.argv[3]), 32 * int(sys.argv[5])))"
    )
    here = str(Path(__file__).resolve().parent)
    out = subprocess.run(
        [sys.executable, "-c", code, here, kind, str(threads), model_dir, str(steps)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return float(out.stdout.strip().splitlines()[-1])


def _decode_model(work: Path, tokenizer: str | None) -> str:
    """A random-weight model of DECODE_SHAPE with a tokenizer (a given one, or one trained on
    a small folder of Python written here)."""
    from pocketlm.checkpoint.model_io import save_model
    from pocketlm.data.build import build_corpus
    from pocketlm.model.config import ModelConfig
    from pocketlm.model.transformer import build_model
    from pocketlm.tokenizer.train import TokenizerConfig, train_tokenizer

    if tokenizer is None:
        src = work / "src"
        src.mkdir()
        for i in range(40):
            (src / f"m{i}.py").write_text(f"def f{i}(x):\n    return x * {i} + 1\n" * 30)
        corpus = build_corpus([str(src)], work / "corpus")
        tokenizer = str(train_tokenizer(corpus, work / "tok", TokenizerConfig(vocab_size=512)))
    config = ModelConfig(vocab_size=VOCAB, max_seq_len=512, n_kv_heads=4, **DECODE_SHAPE)
    return str(save_model(work / "decode-model", build_model(config), tokenizer))


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=8, help="training steps (decode: 32x tokens)")
    p.add_argument("--tokenizer", help="a tokenizer artifact to reuse (default: train a small one)")
    args = p.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from machine import describe_machine
    from pocketlm.common.device import usable_cores

    cores = usable_cores()
    work = Path(tempfile.mkdtemp(prefix="busy-"))
    model_dir = _decode_model(work, args.tokenizer)
    variants = [
        (kind, threads, busy)
        for kind in ("train", "decode")
        for busy in (False, True)
        for threads in (0, cores)  # 0: PocketLM's choice; cores: every core, as before
    ]
    samples: dict[str, list[float]] = {}
    for r in range(args.rounds):
        for kind, threads, busy in variants:
            name = (
                f"{kind} threads={'auto' if threads == 0 else threads} {'busy' if busy else 'idle'}"
            )
            spinner = _spinner() if busy else None
            try:
                if spinner:
                    time.sleep(0.5)
                samples.setdefault(name, []).append(_measure(kind, threads, model_dir, args.steps))
            finally:
                if spinner:
                    spinner.kill()
                    spinner.wait()
            print(f"round {r + 1}: {name}: {samples[name][-1]:,.0f} tok/s", file=sys.stderr)
    med = {k: round(statistics.median(v), 1) for k, v in samples.items()}
    shares = {
        f"{kind} threads={t}": round(
            med[f"{kind} threads={t} busy"] / med[f"{kind} threads=auto idle"], 3
        )
        for kind in ("train", "decode")
        for t in ("auto", cores)
    }
    out: dict[str, Any] = {
        "machine": describe_machine(),
        "tokens_per_s": med,
        "busy_share_of_idle_best": shares,
        "samples": samples,
    }
    path = Path(__file__).resolve().parent / "results" / "busy_machine.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({"tokens_per_s": med, "busy_share_of_idle_best": shares}, indent=2))


if __name__ == "__main__":
    main()
