"""`pocketlm data build` and `pocketlm data encode`."""

from __future__ import annotations

import argparse

from pocketlm.cli.options import (
    add_config_options,
    add_parser,
    command_line,
    config_from_args,
    done,
)

_BUILD_FLAGS = {
    "text_field": "sources.text_field",
    "csv_column": "sources.csv_column",
    "text_unit": "sources.text_unit",
    "min_chars": "clean.min_chars",
    "scrub_pii": "clean.scrub_pii",
    "near_dup_threshold": "dedup.threshold",
    "val_fraction": "val_fraction",
    "on_bad_record": "on_bad_record",
    "workers": "workers",
}


def register(subparsers) -> None:
    data = add_parser(
        subparsers,
        "data",
        help="build a clean corpus and encode it to tokens",
        description="Corpus commands: build (clean, dedup, split, report) and encode (to token shards).",
    )
    sub = data.add_subparsers(dest="data_command", required=True, metavar="{build,encode}")

    build = add_parser(
        sub,
        "build",
        help="clean, deduplicate and split text sources into a corpus",
        description=(
            "Read SOURCEs, clean them (Unicode normalisation, control characters, whitespace, length and\n"
            "repetition filters, optional PII scrubbing), remove exact and near duplicates (MinHash LSH),\n"
            "split train/validation by content hash, and write Parquet shards plus data_report.md.\n"
            "Nothing is dropped silently: the report counts every dropped record by reason and names\n"
            "every file that lost records (all of them in dropped_files.jsonl). A malformed record\n"
            "(CSV with a stray quote or the wrong number of fields, invalid JSON or UTF-8) stops the\n"
            "build with its file, line and byte offset, unless --on-bad-record skip. A line over\n"
            "sources.max_record_bytes (default 4 x clean.max_chars) is dropped unread.\n\n"
            "A SOURCE is a file or folder (txt, md, rst, html, code, jsonl, csv/tsv, parquet), 'stdlib'\n"
            "(the running Python's standard library and docs: real text that exists offline), or\n"
            "hf:NAME_OR_PATH (a Hugging Face dataset saved on disk, or a hub name when online)."
        ),
        examples=(
            "  pocketlm data build stdlib --out runs/corpus\n"
            "  pocketlm data build ~/notes ~/code --out runs/corpus --scrub-pii\n"
            "  pocketlm data build reviews.jsonl --text-field body --on-bad-record skip --out runs/reviews\n"
            "  pocketlm data build stories.txt --text-unit line --out runs/stories"
        ),
    )
    build.add_argument(
        "sources", nargs="+", metavar="SOURCE", help="files, folders, 'stdlib' or hf:DATASET"
    )
    build.add_argument("--out", required=True, help="output corpus directory")
    build.add_argument(
        "--text-field", help="jsonl/parquet/HF field holding the text (default: text)"
    )
    build.add_argument("--csv-column", help="csv/tsv column holding the text (default: text)")
    build.add_argument(
        "--text-unit",
        choices=["file", "paragraph", "line"],
        help="for text files: one document per file, paragraph or line (default: file)",
    )
    build.add_argument(
        "--min-chars", type=int, help="drop documents shorter than this (default: 32)"
    )
    build.add_argument(
        "--scrub-pii",
        action="store_true",
        default=None,
        help="replace e-mails, phone numbers, IP addresses and secrets with placeholders",
    )
    build.add_argument(
        "--near-dup-threshold",
        type=float,
        help="Jaccard similarity above which documents are near duplicates (default: 0.8)",
    )
    build.add_argument(
        "--val-fraction",
        type=float,
        help="share of documents held out for validation (default: 0.01)",
    )
    build.add_argument(
        "--on-bad-record",
        choices=["error", "skip"],
        help="stop at the first bad record, naming file, line and byte offset (default), or skip "
        "it and count it in the report",
    )
    build.add_argument("--workers", type=int, help="worker processes (default: one per core)")
    add_config_options(build)
    build.set_defaults(handler=_build)

    encode = add_parser(
        sub,
        "encode",
        help="tokenize a corpus into memory-mapped token shards",
        description="Tokenize every split of a corpus (<bos> document <eos>) into uint16/uint32 arrays that\ntraining memory-maps, and record bytes per token for bits-per-byte.",
        examples="  pocketlm data encode --data runs/corpus --tokenizer runs/tokenizer --out runs/tokens",
    )
    encode.add_argument("--data", required=True, help="corpus directory from `pocketlm data build`")
    encode.add_argument("--tokenizer", required=True, help="tokenizer (or model) directory")
    encode.add_argument("--out", required=True, help="output tokens directory")
    add_config_options(encode)
    encode.set_defaults(handler=_encode)


def _build(args: argparse.Namespace) -> int:
    from pocketlm.data.build import build_corpus
    from pocketlm.data.config import CorpusConfig

    config = config_from_args(CorpusConfig, args, _BUILD_FLAGS)
    return done(
        build_corpus(
            args.sources, args.out, config, command=command_line(), overwrite=args.overwrite
        )
    )


def _encode(args: argparse.Namespace) -> int:
    from pocketlm.data.config import EncodeConfig
    from pocketlm.data.encode import encode_corpus

    config = config_from_args(EncodeConfig, args, {})
    return done(
        encode_corpus(
            args.data,
            args.tokenizer,
            args.out,
            config,
            command=command_line(),
            overwrite=args.overwrite,
        )
    )
