"""`pocketlm plan`."""

from __future__ import annotations

import argparse

from pocketlm.cli.options import add_parser, add_precision_option


def register(subparsers) -> None:
    p = add_parser(
        subparsers,
        "plan",
        help="what a model size costs and buys on this machine for a budget",
        description=(
            "For a preset, explicit dimensions, or (by default) the candidate presets: parameters,\n"
            "training memory (weights, gradients, optimizer, activations, plus this process's own),\n"
            "the step time measured on this machine, tokens per second, tokens reachable in the budget,\n"
            "epochs of the corpus that means, and the recommended size: the largest that still sees\n"
            "~2 tokens per non-embedding parameter, the best trade-off measured for short CPU\n"
            "budgets (benchmarks/RESULTS.md). The quickstart picks its model this way."
        ),
        examples=(
            "  pocketlm plan --tokens runs/tokens --budget 10m\n"
            "  pocketlm plan --tokens runs/tokens --model micro-6m --budget 20M\n"
            "  pocketlm plan --vocab-size 4096 --layers 6 --dim 256 --heads 8 --budget 1h"
        ),
    )
    p.add_argument("--tokens", help="tokens directory (vocabulary and corpus size come from it)")
    p.add_argument("--vocab-size", type=int, help="vocabulary size when no --tokens is given")
    p.add_argument(
        "--model",
        dest="preset",
        metavar="PRESET",
        help="a named size (default: compare the candidates)",
    )
    p.add_argument("--layers", type=int)
    p.add_argument("--dim", type=int)
    p.add_argument("--heads", type=int)
    p.add_argument("--kv-heads", type=int)
    p.add_argument(
        "--budget",
        default="10m",
        help="time (10m), tokens (20M tokens or 20M) or steps (500 steps)",
    )
    p.add_argument("--ctx", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="auto")
    add_precision_option(p, "autocast precision the training steps are measured in", "auto")
    p.set_defaults(handler=_plan)


def _plan(args: argparse.Namespace) -> int:
    from pocketlm.train.plan_report import run_plan

    print(run_plan(args))
    return 0
