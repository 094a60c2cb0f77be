"""`pocketlm pretrain`."""

from __future__ import annotations

import argparse

from pocketlm.cli.options import (
    add_config_options,
    add_parser,
    add_training_options,
    command_line,
    config_from_args,
    training_budget,
    training_flag_keys,
)

_FLAGS = {
    "preset": "model.preset",
    "layers": "model.n_layers",
    "dim": "model.dim",
    "heads": "model.n_heads",
    "kv_heads": "model.n_kv_heads",
    "ffn_dim": "model.ffn_dim",
    **training_flag_keys(),
}


def register(subparsers) -> None:
    p = add_parser(
        subparsers,
        "pretrain",
        help="pretrain a Llama-compatible model on token shards",
        description=(
            "Train a decoder (RMSNorm, RoPE, SwiGLU, GQA, tied embeddings) by next-token prediction.\n"
            "Choose a size with --model PRESET or --layers/--dim/--heads/--kv-heads, and a budget:\n"
            "wall-clock (--budget 5m; evaluation and compilation count against it), tokens\n"
            "(--max-tokens 20M) or steps (--max-steps 1000). The run directory gets\n"
            "checkpoints/ (atomic, keep-last-N, exact resume with --resume), metrics.jsonl (step,\n"
            "tokens, loss, lr, tokens_per_s; val_loss and val_bpb on evaluation steps), loss.png\n"
            "and model/ (the final model).\n\n"
            "presets: pico-1m nano-3m micro-6m mini-15m small-30m base-50m medium-85m smollm2-135m large-150m"
        ),
        examples=(
            "  pocketlm pretrain --tokens runs/tokens --model micro-6m --budget 10m --out runs/pretrain\n"
            "  pocketlm pretrain --tokens runs/tokens --layers 6 --dim 256 --heads 8 --kv-heads 4 --max-tokens 5M --out runs/p2\n"
            "  pocketlm pretrain --tokens runs/tokens --model micro-6m --budget 10m --out runs/pretrain --resume"
        ),
    )
    p.add_argument("--tokens", required=True, help="tokens directory from `pocketlm data encode`")
    p.add_argument("--out", required=True, help="run directory")
    shape = p.add_argument_group("model shape")
    shape.add_argument("--model", dest="preset", metavar="PRESET", help="a named size (see above)")
    shape.add_argument("--layers", type=int, help="number of decoder layers")
    shape.add_argument("--dim", type=int, help="hidden size")
    shape.add_argument("--heads", type=int, help="attention heads")
    shape.add_argument(
        "--kv-heads", type=int, help="key/value heads (grouped-query attention; default: --heads)"
    )
    shape.add_argument("--ffn-dim", type=int, help="SwiGLU inner size (default: 8/3 x dim)")
    run = p.add_argument_group("training")
    add_training_options(
        run, lr_help="peak learning rate", seed_help="seed for weights and data order"
    )
    run.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its last checkpoint (from its start if it was "
        "stopped before its first one)",
    )
    add_config_options(p)
    p.set_defaults(handler=_pretrain)


def _pretrain(args: argparse.Namespace) -> int:
    from pocketlm.common.env import dist_env
    from pocketlm.train.tasks.pretrain import PretrainConfig, pretrain

    training_budget(args)
    config = config_from_args(PretrainConfig, args, _FLAGS)
    result = pretrain(args.tokens, args.out, config, resume=args.resume, command=command_line())
    if dist_env().rank != 0:
        return 0  # under torchrun the main rank reports
    if result.final:
        print(
            f"val loss {result.final.get('val_loss', float('nan')):.4f}, val bpb {result.final.get('val_bpb', float('nan')):.4f}"
        )
    print(result.model_dir)
    return 0
