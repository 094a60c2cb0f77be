"""`pocketlm quantize`."""

from __future__ import annotations

import argparse

from pocketlm.cli.options import MODEL_HELP, add_parser, command_line, done


def register(subparsers) -> None:
    p = add_parser(
        subparsers,
        "quantize",
        help="shrink a model to bf16, int8 or int4 weights",
        description=(
            "Weight-only quantization of every linear layer and the embeddings: bf16 (16-bit floats),\n"
            "int8 (one scale per output channel) or int4 (one fp16 scale per --group-size values, the\n"
            "GGUF Q4_0 layout). The result is a model directory that generate, eval, bench, the server and\n"
            "the exporters load. With --tokens, the quality cost is measured: validation bits per byte\n"
            "before and after."
        ),
        examples="  pocketlm quantize --model runs/pretrain --scheme int8 --out runs/q8 --tokens runs/tokens\n  pocketlm quantize --model runs/pretrain --scheme int4 --group-size 32 --out runs/q4",
    )
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--scheme", required=True, choices=["bf16", "int8", "int4"])
    p.add_argument(
        "--group-size", type=int, default=32, help="int4: values per scale (a multiple of 32)"
    )
    p.add_argument(
        "--tokens", help="tokens directory to measure validation bits per byte before and after"
    )
    p.add_argument("--out", required=True, help="output model directory")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(handler=_quantize)


def _quantize(args: argparse.Namespace) -> int:
    from pocketlm.compress.quantize import quantize_model_dir

    path, r = quantize_model_dir(
        args.model,
        args.out,
        args.scheme,
        group_size=args.group_size,
        tokens_dir=args.tokens,
        command=command_line(),
        overwrite=args.overwrite,
    )
    size = f"{r['bytes_before'] / 1e6:.1f} MB -> {r['bytes_after'] / 1e6:.1f} MB"
    if "val_bpb_before" in r:
        print(
            f"{args.scheme}: {size}; val bits/byte {r['val_bpb_before']:.4f} -> {r['val_bpb_after']:.4f} ({r['bpb_cost_pct']:+.2f}%)"
        )
    else:
        print(f"{args.scheme}: {size}")
    return done(path)
