"""`pocketlm finetune`: train an existing model further, fully or through a LoRA adapter."""

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
    "lora_rank": "lora.rank",
    "lora_alpha": "lora.alpha",
    "lora_dropout": "lora.dropout",
    "lora_targets": "lora.targets",
    "rslora": "lora.rslora",
    "qlora": "lora.base_quant",
    "group_size": "lora.group_size",
    **training_flag_keys(),
    "val_fraction": "data.val_fraction",
    "on_bad_record": "data.on_bad_record",
    "too_long": "data.too_long",
    "packing": "data.packing",
    "replay_share": "replay_share",
    "end_of_turn_prompts": "end_of_turn_prompts",
}


def register(subparsers) -> None:
    p = add_parser(
        subparsers,
        "finetune",
        help="fine-tune a model (full, LoRA or QLoRA) on chat records or token shards",
        description=(
            "Train an existing model (a PocketLM model or an imported one) further, on either\n"
            "  --data FILE...  chat/instruction records (jsonl, json, csv, parquet, datasets folders;\n"
            "                  `messages`, ShareGPT `conversations`, prompt/completion or Alpaca\n"
            "                  instruction/input/output): the loss falls on the assistant turns and\n"
            "                  their end-of-turn token only, rendered with the model's own chat\n"
            "                  template; short examples are packed into full rows (no attention\n"
            "                  across examples), or\n"
            "  --tokens DIR    a tokens directory encoded with its tokenizer (continued pretraining\n"
            "                  on your domain's text).\n"
            "Modes: every weight (the default), or a LoRA adapter with --lora-rank: the base stays\n"
            "frozen and only small low-rank matrices train (faster, far less memory). QLoRA is LoRA\n"
            "over an int8/int4 base: an artifact from `pocketlm quantize`, or --qlora int4 to\n"
            "quantize a float base in memory. A LoRA run's model/ is an adapter: use it with\n"
            "--model BASE --adapter RUN in generate/chat/eval/serve, fold it into a model with\n"
            "`pocketlm merge`, or export it for peft with `pocketlm export peft`. The run directory\n"
            "holds checkpoints/ (exact resume with --resume), metrics.jsonl, loss.png and model/."
        ),
        examples=(
            "  pocketlm finetune --model ~/models/SmolLM2-135M-Instruct --data chats.jsonl --lora-rank 16 --out runs/chat\n"
            "  pocketlm finetune --model runs/pretrain --tokens runs/domain-tokens --budget 10m --out runs/ft\n"
            "  pocketlm finetune --model runs/pretrain --tokens runs/domain-tokens --lora-rank 8 --out runs/lora\n"
            "  pocketlm finetune --model runs/q4 --tokens runs/domain-tokens --lora-rank 16 --lora-targets q_proj,v_proj --out runs/qlora\n"
            "  pocketlm chat --model runs/pretrain --adapter runs/lora"
        ),
    )
    p.add_argument("--model", required=True, help="the model to start from (or a training run)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--data", nargs="+", metavar="FILE", help="chat/instruction records (files or folders)"
    )
    source.add_argument(
        "--tokens",
        help="tokens directory from `pocketlm data encode`, made with the model's tokenizer",
    )
    replay = p.add_argument_group("replay (with --tokens)")
    replay.add_argument(
        "--replay",
        metavar="TOKENS",
        help="tokens of the original data (same tokenizer): a share of the batches comes from it, "
        "and its validation loss is reported next to the domain's (forgetting)",
    )
    replay.add_argument(
        "--replay-share", type=float, help="share of batches replayed (default: 0.1)"
    )
    data = p.add_argument_group("chat records (with --data)")
    data.add_argument(
        "--val", nargs="+", metavar="FILE", help="held-out records (default: a share of --data)"
    )
    data.add_argument(
        "--val-fraction", type=float, help="share held out without --val (default: 0.05)"
    )
    data.add_argument(
        "--on-bad-record",
        choices=("error", "skip"),
        help="a malformed record stops with its file and line (error, the default) or is counted (skip)",
    )
    data.add_argument(
        "--too-long",
        choices=("drop", "truncate"),
        help="an example longer than --ctx is dropped (default) or truncated; counted either way",
    )
    data.add_argument(
        "--no-packing",
        dest="packing",
        action="store_false",
        default=None,
        help="one example per row, padded (default: several short examples per row)",
    )
    data.add_argument(
        "--end-of-turn-prompts",
        type=int,
        metavar="N",
        help="after training, reply greedily to N held-out prompts and report the share that "
        "ends with the end-of-turn token (default: 32; 0: skip)",
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
    add_training_options(
        run,
        lr_help="peak learning rate (default: 2e-4, AdamW)",
        seed_help="seed for the adapter's start and the data order",
    )
    run.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its last checkpoint"
    )
    add_config_options(p)
    p.set_defaults(handler=_finetune)


def _finetune(args: argparse.Namespace) -> int:
    from pocketlm.cli.chat_check import warn_chat_consistency
    from pocketlm.common.env import dist_env
    from pocketlm.interop.open_model import model_dir as resolve_model
    from pocketlm.train.tasks.finetune import FinetuneConfig, finetune

    training_budget(args)
    config = config_from_args(FinetuneConfig, args, _FLAGS)
    result = finetune(
        args.model, args.tokens, args.out, config, data_files=args.data or (),
        val_files=args.val or (), replay_dir=args.replay, resume=args.resume,
        command=command_line(),
    )  # fmt: skip
    if dist_env().rank != 0:
        return 0  # under torchrun the main rank reports
    if result.final and "val_bpb" in result.final:
        print(f"val loss {result.final['val_loss']:.4f}, val bpb {result.final['val_bpb']:.4f}")
        if "replay_val_bpb" in result.final:
            print(f"original data (replayed): val bpb {result.final['replay_val_bpb']:.4f}")
    elif result.final and "val_loss" in result.final:
        print(f"val loss {result.final['val_loss']:.4f} (assistant tokens)")
    if result.final and "end_of_turn_rate" in result.final:
        print(
            f"end-of-turn rate {result.final['end_of_turn_rate']:.1%} "
            f"({int(result.final['end_of_turn_prompts'])} held-out prompts, greedy replies of at "
            f"most {int(result.final['end_of_turn_budget'])} tokens)"
        )
    # an adapter carries no tokenizer: its base's template and stop ids are the ones it uses
    has_tokenizer = (result.model_dir / "tokenizer.json").is_file()
    warn_chat_consistency(result.model_dir if has_tokenizer else resolve_model(args.model))
    print(result.model_dir)
    return 0
