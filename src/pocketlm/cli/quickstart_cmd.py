"""`pocketlm quickstart`: the whole pipeline on the default corpus in one command."""

from __future__ import annotations

import argparse

from pocketlm.cli.options import add_parser


def register(subparsers) -> None:
    p = add_parser(
        subparsers,
        "quickstart",
        help="build a corpus, a tokenizer and token shards in one go (start here)",
        description=(
            "Run the pipeline end to end, offline: build the corpus (default: the 'stdlib' source, the\n"
            "text that ships with your Python), train a tokenizer, encode token shards. A second run\n"
            "reuses the stages that already finished."
        ),
        examples="  pocketlm quickstart\n  pocketlm quickstart --corpus ~/notes --out runs/notes",
    )
    p.add_argument(
        "--corpus", nargs="+", default=["stdlib"], metavar="SOURCE", help="sources for the corpus"
    )
    p.add_argument("--out", default="runs/quickstart", help="directory for all stages")
    p.add_argument("--vocab-size", type=int, default=4096, help="tokenizer vocabulary size")
    p.set_defaults(handler=_quickstart)


def _quickstart(args: argparse.Namespace) -> int:
    from pocketlm.train.quickstart import run_quickstart

    run_quickstart(args.corpus, args.out, vocab_size=args.vocab_size)
    return 0
