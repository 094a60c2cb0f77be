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
            "directories, training runs or Hugging Face folders) in one table: size on disk, parameters,\n"
            "weights, decode and prefill tokens/s, time to first token (load + first prefill), peak\n"
            "memory, validation bits/byte (--tokens) and task accuracy (--task), plus a Pareto plot of\n"
            "quality against decode speed and against size, the Pareto-optimal variants marked.\n"
            "Each variant is measured in its own process (its peak memory is its own), loaded one at a\n"
            "time, its timed rounds interleaved with the others' so machine drift hits all alike; speed\n"
            "is what `pocketlm bench` measures, bits/byte what `pocketlm eval` reports.\n"
            "--task: a labelled file (text and label columns, any format `pocketlm classify` reads)\n"
            "scores classifiers; a language model's task accuracy is 'not measured' until `pocketlm\n"
            "eval --task` brings a task format for language models.\n"
            "Writes --out: report.md, report.json, pareto.png and manifest.json (parents: the models)."
        ),
        examples=(
            "  pocketlm compare runs/quickstart/pretrain runs/q8 runs/q4 --tokens runs/quickstart/tokens\n"
            "  pocketlm compare runs/clf runs/clf-distilled --task data/val.csv --out runs/compare-clf"
        ),
    )
    p.add_argument("models", nargs="+", metavar="DIR", help="the variants' model directories")
    p.add_argument(
        "--tokens", help="tokens directory encoded with the models' tokenizer (bits/byte)"
    )
    p.add_argument("--task", help="labelled file scoring classifiers (text, label columns)")
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
    from pocketlm.evals.compare import table_lines
    from pocketlm.pipelines.compare import CompareSettings, compare_models

    if args.rounds < 1 or args.prompt_tokens < 1 or args.new_tokens < 1:
        raise ConfigError("--rounds, --prompt-tokens and --new-tokens must be at least 1")
    settings = CompareSettings(
        prompt_tokens=args.prompt_tokens,
        new_tokens=args.new_tokens,
        rounds=args.rounds,
        backend=args.backend,
        threads=cap_threads(args.threads),
        max_tokens=args.max_tokens,
        ctx=args.ctx,
        device=args.device,
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
    print("\n".join(table_lines(report)))
    return done(path)
