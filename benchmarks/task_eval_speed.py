"""Task evaluation speed: 1,000 four-choice items on the M shape (29M parameters) on this machine.

    python benchmarks/task_eval_speed.py                  # torch and native backends
    python benchmarks/task_eval_speed.py --items 200 --backends native --json

The task is a cloze set built from the real text in ../shared/data (TinyStories' validation
excerpt): each item's question is up to 48 words of a story, its choices the word that follows
and three other words of the text, drawn by a seeded generator. The model is random-initialised
with the M shape of infer_speed.py (speed does not depend on the values); its tokenizer is
trained on the Python standard library's docs (vocabulary 8192), as there. The timed part is
`pipelines.task_eval.evaluate_tasks` (the library side of `pocketlm eval --task`): opening the
model, reading the file, scoring every item and aggregating; one fresh process per backend.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "tinystories-valid-excerpt.txt"
M_SHAPE = dict(dim=512, n_layers=8, n_heads=8, n_kv_heads=4, ffn_dim=1536, vocab_size=8192)


def cloze_items(text: str, n: int, seed: int = 0) -> list[dict]:
    """n four-choice items: a story's words so far, the next word and three distractors."""
    words = re.findall(r"[A-Za-z']+|[.,!?]", text)
    vocab = sorted({w for w in words if w.isalpha()})
    rng = random.Random(seed)
    items = []
    while len(items) < n:
        end = rng.randrange(8, len(words))
        if not words[end].isalpha():
            continue
        start = max(0, end - 48)
        question = " ".join(words[start:end])
        wrong = rng.sample([w for w in vocab if w != words[end]], 3)
        choices = [words[end], *wrong]
        rng.shuffle(choices)
        items.append({"question": question, "choices": choices, "answer": words[end]})
    return items


def prepare(work: Path, items: int) -> tuple[Path, Path]:
    """(M model dir, task file), reused when present."""
    os.environ.setdefault("POCKETLM_NO_PROGRESS", "1")
    from pocketlm.checkpoint.model_io import save_model
    from pocketlm.data.build import build_corpus
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
    model = work / "M"
    if not (model / "manifest.json").exists():
        config = ModelConfig(max_seq_len=2048, tie_embeddings=True, **M_SHAPE)
        save_model(model, build_model(config, seed=0), tok, overwrite=True)
    task = work / f"cloze-{items}.jsonl"
    if not task.exists():
        records = cloze_items(DATA.read_text(encoding="utf-8"), items)
        task.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return model, task


_WORKER = """
import json, sys, time
t0 = time.perf_counter()
from pocketlm.pipelines.task_eval import TaskEvalSettings, evaluate_tasks
settings = TaskEvalSettings(backend=sys.argv[3], threads=int(sys.argv[4]))
report = evaluate_tasks(sys.argv[1], [sys.argv[2]], settings)
task = next(iter(report["tasks"].values()))
print(json.dumps({"seconds": time.perf_counter() - t0, "scoring_s": report["seconds"],
                  "backend": report["backend"], "items": task["items"], "threads": int(sys.argv[4]),
                  "acc": task["metrics"]["acc"]["value"]}))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-task-eval")
    p.add_argument("--items", type=int, default=1000)
    p.add_argument("--backends", nargs="+", default=["native", "torch"])
    p.add_argument("--threads", type=int, default=0, help="0: the cores others leave free")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    model, task = prepare(args.work, args.items)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "POCKETLM_NO_PROGRESS": "1"}
    rows = {}
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else "?"
    for backend in args.backends:
        out = subprocess.run(
            [sys.executable, "-c", _WORKER, str(model), str(task), backend, str(args.threads)],
            capture_output=True, text=True, env=env, check=True,
        )  # fmt: skip
        rows[backend] = json.loads(out.stdout.strip().splitlines()[-1])
    if args.json:
        print(json.dumps(rows))
        return
    print(f"load average before: {load}")
    for backend, r in rows.items():
        print(
            f"{backend:>7}: {r['items']} items in {r['seconds']:.1f} s "
            f"(scoring {r['scoring_s']:.1f} s, {r['items'] / r['scoring_s']:.1f} items/s), "
            f"acc {r['acc']:.3f}"
        )


if __name__ == "__main__":
    t = time.perf_counter()
    main()
    print(f"total {time.perf_counter() - t:.0f} s", file=sys.stderr)
