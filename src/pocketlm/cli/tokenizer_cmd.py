"""`pocketlm tokenizer train`."""

from __future__ import annotations

import argparse

from pocketlm.cli.options import (
    add_config_options,
    add_parser,
    command_line,
    config_from_args,
    done,
)


def register(subparsers) -> None:
    tok = add_parser(
        subparsers,
        "tokenizer",
        help="train a byte-level BPE tokenizer",
        description="Tokenizer commands.",
    )
    sub = tok.add_subparsers(dest="tokenizer_command", required=True, metavar="{train}")
    train = add_parser(
        sub,
        "train",
        help="train a byte-level BPE tokenizer on a corpus",
        description=(
            "Train a byte-level BPE tokenizer (Hugging Face `tokenizers`) on the corpus's train split.\n"
            "Every byte sequence round-trips; special tokens: <|pad|> <|bos|> <|endoftext|> and the chat\n"
            "roles <|system|> <|user|> <|assistant|> <|end|>. Writes tokenizer.json files that\n"
            "`tokenizers` and `transformers` load as they are, plus the compression (bytes per token)\n"
            "on the validation split."
        ),
        examples="  pocketlm tokenizer train --data runs/corpus --vocab-size 8192 --out runs/tokenizer",
    )
    train.add_argument("--data", required=True, help="corpus directory from `pocketlm data build`")
    train.add_argument(
        "--vocab-size", type=int, help="vocabulary size including special tokens (default: 8192)"
    )
    train.add_argument(
        "--max-train-bytes", type=int, help="read at most this many bytes of text (default: all)"
    )
    train.add_argument("--out", required=True, help="output tokenizer directory")
    add_config_options(train)
    train.set_defaults(handler=_train)


def _train(args: argparse.Namespace) -> int:
    from pocketlm.tokenizer.train import TokenizerConfig, train_tokenizer

    config = config_from_args(
        TokenizerConfig, args, {"vocab_size": "vocab_size", "max_train_bytes": "max_train_bytes"}
    )
    return done(
        train_tokenizer(
            args.data, args.out, config, command=command_line(), overwrite=args.overwrite
        )
    )
