"""`pocketlm presets`: the named model sizes and what each costs per token."""

from __future__ import annotations

import argparse

from pocketlm.cli.options import add_parser


def register(subparsers) -> None:
    p = add_parser(
        subparsers,
        "presets",
        help="list the named model sizes with parameters, FLOPs and KV bytes per token",
        description="The presets `pocketlm pretrain --model` accepts, at a given vocabulary and context.",
        examples="  pocketlm presets\n  pocketlm presets --vocab-size 4096 --ctx 256",
    )
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--ctx", type=int, default=1024)
    p.set_defaults(handler=_presets)


def _presets(args: argparse.Namespace) -> int:
    from pocketlm.model.presets import PRESETS, preset_config
    from pocketlm.model.summary import format_row

    print(
        f"vocab {args.vocab_size}, context {args.ctx} (SmolLM2-135M itself has vocab 49152: --vocab-size 49152)"
    )
    print(
        f"{'preset':<14}{'params':>8}{'non-emb':>10}  {'shape':<32}{'train F/tok':>9}{'infer F/tok':>9}{'KV/tok bf16':>10}"
    )
    for name in PRESETS:
        print(
            format_row(name, preset_config(name, vocab_size=args.vocab_size, max_seq_len=args.ctx))
        )
    return 0
