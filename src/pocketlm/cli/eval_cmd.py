"""`pocketlm eval`."""

from __future__ import annotations

import argparse
import json

from pocketlm.cli.options import (
    MODEL_HELP,
    add_adapter_option,
    add_parser,
    add_precision_option,
    cap_threads,
    command_line,
)

_EXAMPLES = """\
  pocketlm eval --model runs/pretrain --tokens runs/tokens
  pocketlm eval --model runs/pretrain/model --tokens runs/tokens --json
  pocketlm eval --model runs/pretrain --task quiz.jsonl
  pocketlm eval --model runs/q8 --task quiz.jsonl answers.jsonl --shots 3 --out runs/eval-q8
  pocketlm eval --model runs/pretrain --task quiz.jsonl --backend torch --limit 200 --json
  pocketlm eval --model runs/onnx --task quiz.jsonl          # the exported file that ships
  pocketlm eval --model runs/model-q8_0.gguf --task quiz.jsonl

task files (JSONL, or CSV with a header; the type is read from the fields):
  multiple choice  {"question": "The sky is", "choices": ["blue", "green"], "answer": 0}
  generation       {"prompt": "2 + 2 =", "answer": "4", "stop": ["\\n"]}
  classification   {"text": "I loved it", "label": "positive"}
"""


def register(subparsers) -> None:
    p = add_parser(
        subparsers,
        "eval",
        help="bits per byte on a tokens split, or scores on task files",
        description=(
            "Evaluate a model, one of two ways (exactly one of --tokens / --task):\n"
            "  --tokens: mean loss (nats/token) and bits per byte of a tokens artifact's split (nats over\n"
            "    text tokens / ln 2 / the bytes they stand for), comparable across tokenizers;\n"
            "  --task: scores on local task files. Multiple choice by log-likelihood: acc, acc_norm (each\n"
            "    choice's log-likelihood / its length in characters) and acc_bytes, as lm-evaluation-harness\n"
            "    defines them; generation by greedy output: exact_match, contains, regex; classification:\n"
            "    a classifier's label, or a language model's most likely label word. Each score comes with\n"
            "    its standard error; the report lists a few failures. Any backend runs it (torch, native,\n"
            "    quantized models, an ONNX export, a GGUF file); --out writes report.json, report.md and\n"
            "    items.jsonl (every item's outcome) as an artifact."
        ),
        examples=_EXAMPLES,
    )
    p.add_argument("--model", required=True, help=MODEL_HELP)
    add_adapter_option(p)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--tokens", help="tokens directory encoded with the model's tokenizer")
    what.add_argument("--task", nargs="+", metavar="FILE", help="task files (.jsonl, .csv, .tsv)")
    bpb = p.add_argument_group("--tokens (bits per byte)")
    bpb.add_argument("--split", default="val", choices=["val", "train"], help="which split")
    bpb.add_argument(
        "--max-tokens", type=int, default=262144, help="evaluate on at most this many tokens"
    )
    bpb.add_argument(
        "--ctx", type=int, default=0, help="window length (default: the model's context)"
    )
    bpb.add_argument("--batch-size", type=int, default=8)
    task = p.add_argument_group("--task (task files)")
    task.add_argument("--shots", type=int, default=0, help="solved examples before each item")
    task.add_argument("--seed", type=int, default=1234, help="seed of the examples' choice")
    task.add_argument("--limit", type=int, help="score only the first N items of each task")
    task.add_argument(
        "--task-type",
        default="auto",
        choices=["auto", "choice", "generate", "classify"],
        help="the task type (auto: from the fields of the first record)",
    )
    task.add_argument(
        "--max-new-tokens", type=int, default=64, help="longest generated answer, in tokens"
    )
    task.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "torch", "native", "onnx", "llamacpp"],
        help="onnx: an `export onnx` directory in onnxruntime; llamacpp: a .gguf file in "
        "llama.cpp; auto: onnx or llamacpp by the path, else the native CPU kernels when they "
        "run the model, else torch",
    )
    task.add_argument(
        "--threads",
        type=int,
        default=0,
        help="threads of the native, onnx or llamacpp backend (0: auto)",
    )
    add_precision_option(task, "precision of the torch backend", "auto")
    task.add_argument(
        "--out", metavar="DIR", help="write report.json, report.md and items.jsonl here"
    )
    task.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=_eval)


def _eval(args: argparse.Namespace) -> int:
    if args.task:
        return _eval_tasks(args)
    from pocketlm.evals.evaluate import evaluate_model

    result = evaluate_model(
        args.model,
        args.tokens,
        split=args.split,
        max_tokens=args.max_tokens,
        ctx=args.ctx,
        batch_size=args.batch_size,
        device=args.device,
        adapter=args.adapter,
    )
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{result['model']}: {args.split} loss {result['loss']:.4f} nats/token, {result['bpb']:.4f} bits/byte ({result['tokens']:,} tokens, {result['bytes']:,} bytes)"
        )
    return 0


def _eval_tasks(args: argparse.Namespace) -> int:
    from pocketlm.evals.task_report import report_lines
    from pocketlm.pipelines.task_eval import TaskEvalSettings, evaluate_tasks

    settings = TaskEvalSettings(
        shots=args.shots,
        seed=args.seed,
        limit=args.limit,
        task_type=args.task_type,
        max_new_tokens=args.max_new_tokens,
        backend=args.backend,
        device=args.device,
        precision=args.precision,
        threads=cap_threads(args.threads),
    )
    report = evaluate_tasks(
        args.model,
        args.task,
        settings,
        adapter=args.adapter,
        out=args.out,
        overwrite=args.overwrite,
        command=command_line(),
    )
    report.pop("items")  # every item's outcome: in --out's items.jsonl
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"{report['model']} [{report['backend']}, {report['shots']}-shot]")
    for line in report_lines(report):
        print(f"  {line}")
    if "out" in report:
        print(report["out"])
    return 0
