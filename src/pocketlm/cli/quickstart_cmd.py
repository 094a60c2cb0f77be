"""`pocketlm quickstart`: the whole pipeline on the default corpus in one command."""

from __future__ import annotations

import argparse

from pocketlm.cli.options import add_parser, command_line


def register(subparsers) -> None:
    p = add_parser(
        subparsers,
        "quickstart",
        help="corpus -> tokenizer -> model -> report, offline, in one command (start here)",
        description=(
            "Run the whole pipeline end to end, offline: build the corpus (default: the 'stdlib' source,\n"
            "the text that ships with your Python), train a tokenizer, encode tokens, measure which model\n"
            "size fits the budget on this machine, pretrain it for the budget, evaluate it and write\n"
            "report.md (parameters, tokens seen, tokens/s, validation bits per byte, loss plot, samples).\n"
            "A second run reuses the stages that already finished and resumes an interrupted training."
        ),
        examples="  pocketlm quickstart\n  pocketlm quickstart --chat        # + a chat fine-tuning stage\n  pocketlm quickstart --budget 2m --out runs/qs\n  pocketlm quickstart --corpus ~/notes --budget 10m --out runs/notes",
    )
    p.add_argument(
        "--corpus", nargs="+", default=["stdlib"], metavar="SOURCE", help="sources for the corpus"
    )
    p.add_argument("--budget", default="5m", help="training wall-clock budget")
    p.add_argument("--out", default="runs/quickstart", help="directory for all stages")
    p.add_argument("--vocab-size", type=int, default=4096, help="tokenizer vocabulary size")
    p.add_argument(
        "--model",
        default="",
        metavar="PRESET",
        help="model preset (default: chosen for the budget)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    p.add_argument(
        "--chat",
        action="store_true",
        help="then fine-tune it into a chat model on requests derived from the stdlib's own "
        "functions (docstring -> code), offline",
    )
    p.add_argument("--chat-budget", default="2m", help="budget of the chat fine-tuning stage")
    p.add_argument(
        "--no-variants",
        dest="variants",
        action="store_false",
        help="skip the last stage: int8 and int4 copies and ONNX/GGUF exports (when their "
        "extras are installed) compared with the model on size, speed, bits per byte and a "
        "cloze task, with a parity table (compare/ and the report)",
    )
    p.set_defaults(handler=_quickstart)


def _quickstart(args: argparse.Namespace) -> int:
    from pocketlm.pipelines.quickstart import QuickstartConfig, run_quickstart

    config = QuickstartConfig(
        corpus=tuple(args.corpus),
        budget=args.budget,
        vocab_size=args.vocab_size,
        model=args.model,
        device=args.device,
        chat=args.chat,
        variants=args.variants,
        chat_budget=args.chat_budget,
    )
    run_quickstart(config, args.out, command=command_line())
    return 0
