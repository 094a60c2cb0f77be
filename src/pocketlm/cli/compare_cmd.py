"""`pocketlm compare`."""

from __future__ import annotations

import argparse
from pathlib import Path

from pocketlm.cli.options import add_parser, cap_threads, command_line, done


def register(subparsers) -> None:
    p = add_parser(
        subparsers,
        "compare",
        help="one table of size, parameters, speed, memory and quality of model variants",
        description=(
            "Compare model variants (original, quantized, pruned, distilled, combinations: model\n"
            "directories, training runs, Hugging Face folders, and the artifacts that ship: an `export\n"
            "onnx` directory, a .gguf file, each run on its own runtime) in one table: size on disk,\n"
            "parameters, weights, decode and prefill tokens/s, time to first token (load + first\n"
            "prefill), peak memory, validation bits/byte (--tokens; model directories only) and task\n"
            "score (--task), plus a Pareto plot of quality against decode speed and against size, the\n"
            "Pareto-optimal variants marked.\n"
            "Parity with the reference (the FIRST variant): each language model's greedy continuations\n"
            "of fixed prompts compared token by token with the reference's (identical tokens until the\n"
            "first divergence; identical continuations), and with --task each task's score difference\n"
            "and the share of items answered the same.\n"
            "Each variant is measured in its own process (its peak memory is its own), loaded one at a\n"
            "time, its timed rounds interleaved with the others' so machine drift hits all alike; speed\n"
            "is what `pocketlm bench` measures, bits/byte what `pocketlm eval` reports.\n"
            "--task: for language models, task files as `pocketlm eval --task` reads them (multiple\n"
            "choice, generation, text/label), scored on each variant's own backend; for classifiers,\n"
            "labelled files (text and label columns, any format `pocketlm classify` reads).\n"
            "Writes --out: report.md, report.json, pareto.png and manifest.json (parents: the models)."
        ),
        examples=(
            "  pocketlm compare runs/quickstart/pretrain runs/q8 runs/q4 --tokens runs/quickstart/tokens\n"
            "  pocketlm compare runs/qs/pretrain runs/qs/int8 runs/onnx runs/model.gguf --task mc.jsonl\n"
            "  pocketlm compare runs/clf runs/clf-distilled --task data/val.csv --out runs/compare-clf"
        ),
    )
    p.add_argument(
        "models",
        nargs="+",
        metavar="MODEL",
        help="the variants: model directories, `export onnx` directories, .gguf files; "
        "the first is the parity reference",
    )
    p.add_argument(
        "--tokens", help="tokens directory encoded with the models' tokenizer (bits/byte)"
    )
    p.add_argument(
        "--task",
        nargs="+",
        metavar="FILE",
        help="task files (language models: `pocketlm eval --task`'s formats; classifiers: "
        "text, label columns)",
    )
    p.add_argument("--limit", type=int, help="score at most this many items of each task")
    p.add_argument(
        "--greedy-tokens",
        type=int,
        default=32,
        help="greedy tokens per fixed prompt compared with the reference's (0: none)",
    )
    p.add_argument("--out", default="runs/compare", help="the report artifact directory")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument(
        "--rounds", type=int, default=3, help="interleaved timed rounds (medians are reported)"
    )
    p.add_argument("--backend", choices=["auto", "native", "torch"], default="auto")
    p.add_argument(
        "--threads", type=int, default=0, help="CPU threads per variant (default: all usable)"
    )
    p.add_argument(
        "--max-tokens", type=int, default=262144, help="evaluate bits/byte on at most this many"
    )
    p.add_argument("--ctx", type=int, default=0, help="evaluation window (default: the model's)")
    p.add_argument("--device", default="auto", help="for the evaluation: cpu, cuda, auto")
    p.set_defaults(handler=_compare)


def _compare(args: argparse.Namespace) -> int:
    from pocketlm.common.errors import ConfigError
    from pocketlm.evals.artifact_parity import parity_lines
    from pocketlm.evals.compare import table_lines
    from pocketlm.pipelines.compare import CompareSettings, compare_models

    if args.rounds < 1 or args.prompt_tokens < 1 or args.new_tokens < 1:
        raise ConfigError("--rounds, --prompt-tokens and --new-tokens must be at least 1")
    if args.greedy_tokens < 0 or (args.limit is not None and args.limit < 1):
        raise ConfigError("--greedy-tokens must be >= 0 and --limit at least 1")
    settings = CompareSettings(
        prompt_tokens=args.prompt_tokens,
        new_tokens=args.new_tokens,
        rounds=args.rounds,
        backend=args.backend,
        threads=cap_threads(args.threads),
        max_tokens=args.max_tokens,
        ctx=args.ctx,
        device=args.device,
        greedy_tokens=args.greedy_tokens,
        task_limit=args.limit,
    )
    path, report = compare_models(
        args.models,
        Path(args.out),
        tokens=args.tokens,
        task=args.task,
        settings=settings,
        command=command_line(),
        overwrite=args.overwrite,
    )
    lines = table_lines(report)
    if report["parity"]:
        lines += ["", f"Parity with the reference ({report['parity']['reference']}):"]
        lines += parity_lines(report["parity"])
    print("\n".join(lines))
    return done(path)
