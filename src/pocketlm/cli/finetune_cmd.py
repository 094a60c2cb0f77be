"""`pocketlm finetune`: train an existing model further, fully or through a LoRA adapter."""

from __future__ import annotations

import argparse

from pocketlm.cli.options import (
    add_config_options,
    add_parser,
    add_precision_option,
    command_line,
    config_from_args,
)

_FLAGS = {
    "lora_rank": "lora.rank",
    "lora_alpha": "lora.alpha",
    "lora_dropout": "lora.dropout",
    "lora_targets": "lora.targets",
    "rslora": "lora.rslora",
    "qlora": "lora.base_quant",
    "group_size": "lora.group_size",
    "ctx": "train.ctx",
    "batch_size": "train.batch_size",
    "grad_accum": "train.grad_accum",
    "lr": "train.optim.lr",
    "budget": "train.budget",
    "precision": "train.precision",
    "device": "train.device",
    "seed": "train.seed",
    "compile": "train.compile",
}


def register(subparsers) -> None:
    p = add_parser(
        subparsers,
        "finetune",
        help="fine-tune a model (full, LoRA or QLoRA) on token shards",
        description=(
            "Continue training an existing model (a PocketLM model or an imported one) on a tokens\n"
            "directory encoded with its tokenizer (continued pretraining on your domain's text).\n"
            "Modes: every weight (the default), or a LoRA adapter with --lora-rank: the base stays\n"
            "frozen and only small low-rank matrices train (faster, far less memory). QLoRA is LoRA\n"
            "over an int8/int4 base: an artifact from `pocketlm quantize`, or --qlora int4 to\n"
            "quantize a float base in memory. A LoRA run's model/ is an adapter: use it with\n"
            "--model BASE --adapter RUN in generate/chat/eval/serve, fold it into a model with\n"
            "`pocketlm merge`, or export it for peft with `pocketlm export peft`. The run directory\n"
            "holds checkpoints/ (exact resume with --resume), metrics.jsonl, loss.png and model/."
        ),
        examples=(
            "  pocketlm finetune --model runs/pretrain --tokens runs/domain-tokens --budget 10m --out runs/ft\n"
            "  pocketlm finetune --model runs/pretrain --tokens runs/domain-tokens --lora-rank 8 --out runs/lora\n"
            "  pocketlm finetune --model runs/q4 --tokens runs/domain-tokens --lora-rank 16 --lora-targets q_proj,v_proj --out runs/qlora\n"
            "  pocketlm chat --model runs/pretrain --adapter runs/lora"
        ),
    )
    p.add_argument("--model", required=True, help="the model to start from (or a training run)")
    p.add_argument(
        "--tokens",
        required=True,
        help="tokens directory from `pocketlm data encode`, made with the model's tokenizer",
    )
    p.add_argument("--out", required=True, help="run directory")
    lora = p.add_argument_group("LoRA (a frozen base and a small trained adapter)")
    lora.add_argument(
        "--lora-rank", type=int, help="train a LoRA adapter of this rank (default: 0, every weight)"
    )
    lora.add_argument(
        "--lora-alpha", type=float, help="scale of the update: alpha / rank (default: 16)"
    )
    lora.add_argument(
        "--lora-dropout", type=float, help="dropout on the adapter's input (default: 0)"
    )
    lora.add_argument(
        "--lora-targets",
        help="comma-separated module-name suffixes (q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,"
        "down_proj, lm_head) or all-linear: every linear of the decoder layers, experts "
        "included (default: all-linear)",
    )
    lora.add_argument(
        "--rslora",
        action="store_true",
        default=None,
        help="rank-stabilised scale alpha / sqrt(rank)",
    )
    lora.add_argument(
        "--qlora",
        choices=["int8", "int4"],
        help="QLoRA over a float base: quantize it in memory to this scheme first",
    )
    lora.add_argument("--group-size", type=int, help="--qlora int4: values per scale (default: 32)")
    run = p.add_argument_group("training")
    run.add_argument("--ctx", type=int, help="sequence length in tokens (default: 256)")
    run.add_argument("--batch-size", type=int, help="sequences per micro-batch (default: 16)")
    run.add_argument("--grad-accum", type=int, help="micro-batches per optimizer step (default: 1)")
    run.add_argument("--lr", type=float, help="peak learning rate (default: 2e-4, AdamW)")
    budget = run.add_mutually_exclusive_group()
    budget.add_argument("--budget", help="wall-clock budget, e.g. 5m, 90s, 1h (default: 5m)")
    budget.add_argument("--max-tokens", help="token budget, e.g. 20M")
    budget.add_argument("--max-steps", type=int, help="optimizer-step budget")
    add_precision_option(run, "autocast precision of the training step", None)
    run.add_argument("--device", help="auto, cpu, cuda, cuda:N, mps (default: auto)")
    run.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    run.add_argument("--seed", type=int, help="seed for the adapter's start and the data order")
    run.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its last checkpoint"
    )
    add_config_options(p)
    p.set_defaults(handler=_finetune)


def _finetune(args: argparse.Namespace) -> int:
    from pocketlm.common.env import dist_env
    from pocketlm.train.tasks.finetune import FinetuneConfig, finetune

    if args.max_tokens:
        args.budget = f"{args.max_tokens} tokens"
    elif args.max_steps:
        args.budget = f"{args.max_steps} steps"
    if args.compile:
        args.compile = "on"
    config = config_from_args(FinetuneConfig, args, _FLAGS)
    result = finetune(
        args.model, args.tokens, args.out, config, resume=args.resume, command=command_line()
    )
    if dist_env().rank != 0:
        return 0  # under torchrun the main rank reports
    if result.final:
        print(
            f"val loss {result.final.get('val_loss', float('nan')):.4f}, "
            f"val bpb {result.final.get('val_bpb', float('nan')):.4f}"
        )
    print(result.model_dir)
    return 0
