"""`pocketlm merge`: fold a LoRA adapter into its base, giving one plain model artifact."""

from __future__ import annotations

import argparse

from pocketlm.cli.options import add_parser, command_line, done


def register(subparsers) -> None:
    p = add_parser(
        subparsers,
        "merge",
        help="fold a LoRA adapter into its base model (one plain model)",
        description=(
            "Add a LoRA adapter's update (alpha / rank x B A) to the weights of the base it was\n"
            "trained on (checked by hash) and write the result as an ordinary model directory: its\n"
            "logits equal base + adapter (fp32, to rounding), and the native backend, the exporters\n"
            "and quantize take it like any model. For a quantized (int8/int4, QLoRA) base the output\n"
            "is a float model: the dequantized base weights plus the merged update (quantize it\n"
            "again with `pocketlm quantize` if you want it small)."
        ),
        examples=(
            "  pocketlm merge --model runs/pretrain --adapter runs/lora --out runs/merged\n"
            "  pocketlm merge --model runs/q4 --adapter runs/qlora --out runs/qlora-merged"
        ),
    )
    p.add_argument("--model", required=True, help="the base model (or its training run)")
    p.add_argument(
        "--adapter", required=True, help="LoRA adapter directory (or a LoRA fine-tuning run)"
    )
    p.add_argument("--out", required=True, help="output model directory")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it already exists")
    p.set_defaults(handler=_merge)


def _merge(args: argparse.Namespace) -> int:
    from pocketlm.checkpoint.adapted_model import merge_adapter
    from pocketlm.interop.open_model import model_dir

    base = model_dir(args.model)  # an HF folder is imported (once), as everywhere
    return done(
        merge_adapter(
            base, args.adapter, args.out, command=command_line(), overwrite=args.overwrite
        )
    )
