"""`pocketlm prune`."""

from __future__ import annotations

import argparse

from pocketlm.cli.options import MODEL_HELP, add_parser, command_line, done

_DESCRIPTION = """\
Structured pruning (Minitron style): cut whole layers, whole attention groups (a kv head with
all its query heads), FFN channels and hidden (embedding) channels, ranked by how much they do
on calibration tokens - a layer by 1 - cos(hidden in, hidden out), a head by its output's norm,
an FFN channel by its mean |activation|, a hidden channel by the residual stream's mean |value|.
Every layer keeps the same new sizes, so the result is an ordinary model of its family: it runs
on both engines and exports to Hugging Face and GGUF.

Sizes: --target-params N (at most N parameters, tied embeddings counted once) or --ratio R
(keep R of the non-embedding parameters) shrink the --axes in order, each down to its floor
(FFN to 1/4, hidden channels, heads and layers to 1/2) before the next is touched; then the
earlier axes grow back into what is left. Width goes before depth: width-pruned models heal
better. --layers/--heads/--ffn-dim/--dim fix an axis (alone, or with a target sizing the rest).
Hidden channels are cut under RMSNorm only (its eps and weights rescale, so dead channels cut
exactly); MoE, encoder, classifier and quantized models are refused.

A pruned model has lost quality: heal it by distilling from the original, e.g.
  pocketlm distill --teacher ORIGINAL --student PRUNED --tokens TOKENS --out HEALED
(or from `pocketlm distill cache` of the original on a CPU budget)."""


def register(subparsers) -> None:
    p = add_parser(
        subparsers,
        "prune",
        help="cut layers, heads and channels by importance (heal with distill)",
        description=_DESCRIPTION,
        examples=(
            "  pocketlm prune --model runs/m --ratio 0.6 --calib runs/tokens --out runs/m-pruned\n"
            "  pocketlm distill --teacher runs/m --student runs/m-pruned --tokens runs/tokens --out runs/healed\n"
            "  pocketlm prune --model runs/m --target-params 20M --axes ffn,heads --calib runs/tokens --out runs/p\n"
            "  pocketlm prune --model runs/m --layers 6 --ffn-dim 512 --calib runs/tokens --out runs/p"
        ),
    )
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--calib", required=True,
                   help="tokens directory (`pocketlm data encode` with the model's tokenizer)")  # fmt: skip
    p.add_argument("--out", required=True, help="output model directory")
    size = p.add_argument_group("sizes")
    size.add_argument("--target-params", help="at most this many parameters (e.g. 20M)")
    size.add_argument("--ratio", type=float, help="keep this share of the non-embedding parameters")
    size.add_argument("--axes", default="ffn,dim,heads,layers",
                      help="what the target may shrink, in order")  # fmt: skip
    size.add_argument("--layers", type=int, help="layers to keep")
    size.add_argument("--heads", type=int, help="query heads to keep (whole GQA groups)")
    size.add_argument("--ffn-dim", type=int, help="FFN channels to keep per layer")
    size.add_argument("--dim", type=int, help="hidden (embedding) channels to keep")
    calib = p.add_argument_group("calibration")
    calib.add_argument("--calib-tokens", default="16k", help="tokens to measure importance on")
    calib.add_argument("--ctx", type=int, default=256, help="calibration window length")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(handler=_prune)


def _prune(args: argparse.Namespace) -> int:
    from pocketlm.common.units import parse_count
    from pocketlm.compress.prune import prune_model_dir

    path, r = prune_model_dir(
        args.model,
        args.out,
        args.calib,
        target_params=parse_count(args.target_params) if args.target_params else None,
        ratio=args.ratio,
        layers=args.layers,
        heads=args.heads,
        ffn_dim=args.ffn_dim,
        dim=args.dim,
        axes=[a.strip() for a in args.axes.split(",") if a.strip()],
        calib_tokens=parse_count(args.calib_tokens),
        ctx=args.ctx,
        command=command_line(),
        overwrite=args.overwrite,
    )
    print(
        f"{r['params_before']:,} -> {r['params_after']:,} parameters: layers {r['layers'][1]}, "
        f"heads {r['heads'][1]}/{r['kv_heads'][1]} kv, ffn {r['ffn_dim'][1]}, dim {r['dim'][1]}"
    )
    return done(path)
