"""Fine-tuning quality on real data: chat SFT on ../shared/data/chat and continued pretraining
with replay, from a TinyStories model pretrained here.

    python benchmarks/finetune_quality.py                    # every stage, ~35 CPU-minutes
    python benchmarks/finetune_quality.py --base DIR         # reuse a pretrained TinyStories model

Stages (each through the `pocketlm` CLI a user runs, results in benchmarks/results/):
  base      the best ten-minute TinyStories recipe (train_quality.py's c6: 8 x 160, Muon)
  chat      `pocketlm finetune --data` on the chat set: conversations split 90/10 by a hash of
            their text (held-out loss before and after, end-of-turn rate over every held-out
            prompt, sample replies)
  imported  the same on an *imported* model: the base exported to a Hugging Face Llama folder
            and fine-tuned from that folder (the import path a user of an HF model takes; no
            pretrained weights can be downloaded here), as a LoRA adapter
  continued `pocketlm finetune --tokens` on another corpus (the movie-review sentences of
            ../shared/data/sentiment, as plain text) with 10% replay of TinyStories: both
            validation curves, bits per byte of each corpus before and after
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[1] / "shared" / "data"
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))


def pocketlm(*args: str) -> None:
    """Run one CLI command, failing loudly."""
    print("$ pocketlm", " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "pocketlm", *args], check=True)


def split_chat(work: Path) -> tuple[Path, Path]:
    """train/val jsonl of the chat set: a conversation is held out when the first byte of the
    sha256 of its text is < 26 (~10%)."""
    train, val = work / "chat-train.jsonl", work / "chat-val.jsonl"
    lines = (SHARED / "chat" / "chatterbot-english.jsonl").read_text(encoding="utf-8").splitlines()
    held = [hashlib.sha256(line.encode()).digest()[0] < 26 for line in lines]
    train.write_text("".join(x + "\n" for x, h in zip(lines, held, strict=True) if not h))
    val.write_text("".join(x + "\n" for x, h in zip(lines, held, strict=True) if h))
    return train, val


def summary(run: Path) -> dict:
    """The run's model manifest summary."""
    return json.loads((run / "model" / "manifest.json").read_text())["summary"]


def first_val(run: Path) -> dict:
    """The first metrics row with a validation loss (the evaluation before training)."""
    for line in (run / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "val_loss" in row:
            return row
    return {}


def samples(model: str, val: Path, n: int, adapter: str | None = None) -> list[dict]:
    """Greedy replies (at most 48 tokens) to the first user turn of the first n held-out
    conversations, with the reference reply."""
    from pocketlm.engine.chat_session import ChatSession
    from pocketlm.engine.load import load_engine
    from pocketlm.engine.sampling import SamplingParams

    engine = load_engine(model, adapter=adapter)
    out = []
    for line in val.read_text().splitlines()[:n]:
        messages = json.loads(line)["messages"]
        session = ChatSession(engine, SamplingParams(max_new_tokens=48, temperature=0.0))
        reply = "".join(session.send(messages[0]["content"]))
        out.append({"prompt": messages[0]["content"], "reply": reply,
                    "reference": messages[1]["content"]})  # fmt: skip
    return out


def chat_stage(name: str, model: str, train: Path, val: Path, work: Path, extra: list[str]):
    run = work / name
    n_val = len(val.read_text().splitlines())
    if not (run / "model" / "manifest.json").exists():  # a finished stage is reused
        shutil.rmtree(run, ignore_errors=True)
        pocketlm(
        "finetune", "--model", model, "--data", str(train), "--val", str(val), "--out", str(run),
        "--end-of-turn-prompts", str(n_val), "--too-long", "truncate", *extra,
        )  # fmt: skip
    s = summary(run)
    adapter = str(run) if "--lora-rank" in extra else None
    return {
        "name": name,
        "model": model,
        "val_loss_before": first_val(run).get("val_loss"),
        "val_loss_after": s.get("val_loss"),
        "end_of_turn_rate": s.get("end_of_turn_rate"),
        "end_of_turn_prompts": s.get("end_of_turn_prompts"),
        "tokens": s.get("tokens"),
        "train_seconds": s.get("train_seconds"),
        "samples": samples(model if adapter else str(run), val, 6, adapter),
    }


def continued_stage(base: Path, ts_tokens: Path, work: Path, budget: str) -> dict:
    reviews = work / "reviews"
    reviews.mkdir(exist_ok=True)
    rows = (SHARED / "sentiment" / "movie-reviews.tsv").read_text(encoding="utf-8").splitlines()
    text = "\n".join(r.split("\t")[3] for r in rows[1:])
    (reviews / "reviews.txt").write_text(text + "\n", encoding="utf-8")
    for sub in ("corpus", "tokens", "cpt"):
        shutil.rmtree(work / f"reviews-{sub}", ignore_errors=True)
    pocketlm(
        "data", "build", str(reviews), "--text-unit", "line", "--out", str(work / "reviews-corpus")
    )
    pocketlm(
        "data", "encode", "--data", str(work / "reviews-corpus"), "--tokenizer", str(base),
        "--out", str(work / "reviews-tokens"),
    )  # fmt: skip
    run = work / "reviews-cpt"
    pocketlm(
        "finetune", "--model", str(base), "--tokens", str(work / "reviews-tokens"),
        "--replay", str(ts_tokens), "--replay-share", "0.1", "--out", str(run), "--budget", budget,
    )  # fmt: skip
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "val_loss" in r]
    keys = ("step", "tokens", "val_bpb", "replay_val_bpb", "val_loss", "replay_val_loss")
    curve = [{k: r.get(k) for k in keys} for r in evals]
    shutil.copyfile(run / "loss.png", RESULTS / "finetune_quality-continued-loss.png")
    return {"curve": curve, "first": curve[0], "last": curve[-1]}


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--workdir", default="/tmp/pocketlm-ftq")
    p.add_argument("--base", help="a pretrained TinyStories model (default: pretrain one)")
    p.add_argument("--base-budget", default="10m")
    p.add_argument("--chat-budget", default="5m")
    p.add_argument(
        "--chat-lr", default="1e-3",
        help="the full fine-tune's learning rate (finetune's default 2e-4 suits large models; "
        "this 3.2M-parameter base learned the chat format too slowly with it: 60%% end-of-turn)",
    )  # fmt: skip
    p.add_argument("--continued-budget", default="10m")
    p.add_argument(
        "--stages", nargs="+", default=["chat", "imported", "continued"],
        choices=["chat", "imported", "continued"],
    )  # fmt: skip
    args = p.parse_args()
    os.environ.setdefault("POCKETLM_NO_PROGRESS", "1")
    from tinystories import prepare

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(exist_ok=True)
    ts_tokens = prepare(work, 4096)
    base = Path(args.base) if args.base else work / "runs" / "ftq-base" / "model"
    if not args.base and not (base / "manifest.json").exists():
        subprocess.run(
            [sys.executable, str(HERE / "train_quality.py"), "--name", "ftq-base",
             "--workdir", str(work), "--layers", "8", "--dim", "160", "--heads", "5",
             "--budget", args.base_budget],
            check=True,
        )  # fmt: skip
    result: dict = {"base": str(base), "base_summary": summary(base.parent)}
    train, val = split_chat(work)
    budget = ["--budget", args.chat_budget]
    if "chat" in args.stages:
        full = [*budget, "--lr", args.chat_lr]
        result["chat"] = chat_stage("chat-full", str(base), train, val, work, full)
    if "imported" in args.stages:
        hf = work / "base-hf"
        if not (hf / "manifest.json").exists():  # kept: an adapter names its base by hash
            pocketlm("export", "hf", "--model", str(base), "--out", str(hf))
        lora = ["--lora-rank", "16", "--lora-alpha", "32", "--lr", "1e-3"]
        result["imported"] = chat_stage(
            "chat-imported-lora", str(hf), train, val, work, budget + lora
        )
    if "continued" in args.stages:
        result["continued"] = continued_stage(base, ts_tokens, work, args.continued_budget)
    out = RESULTS / "finetune_quality.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
