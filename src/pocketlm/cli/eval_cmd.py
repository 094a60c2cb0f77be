"""`pocketlm eval`."""

from __future__ import annotations

import argparse
import json

from pocketlm.cli.options import MODEL_HELP, add_adapter_option, add_parser


def register(subparsers) -> None:
    p = add_parser(
        subparsers,
        "eval",
        help="validation loss and bits per byte of a model",
        description=(
            "Evaluate a model on a tokens artifact's validation split: mean loss (nats/token) and bits per\n"
            "byte (nats over text tokens / ln 2 / the bytes they stand for), comparable across tokenizers."
        ),
        examples="  pocketlm eval --model runs/pretrain --tokens runs/tokens\n  pocketlm eval --model runs/pretrain/model --tokens runs/tokens --json",
    )
    p.add_argument("--model", required=True, help=MODEL_HELP)
    add_adapter_option(p)
    p.add_argument(
        "--tokens", required=True, help="tokens directory encoded with the model's tokenizer"
    )
    p.add_argument("--split", default="val", choices=["val", "train"], help="which split")
    p.add_argument(
        "--max-tokens", type=int, default=262144, help="evaluate on at most this many tokens"
    )
    p.add_argument(
        "--ctx", type=int, default=0, help="window length (default: the model's context)"
    )
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=_eval)


def _eval(args: argparse.Namespace) -> int:
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
