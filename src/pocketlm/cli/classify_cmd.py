"""`pocketlm classify train|eval|predict|distill`: text classifiers from labelled files."""

from __future__ import annotations

import argparse
import sys

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
    "text_column": "data.text_column",
    "label_column": "data.label_column",
    "on_bad_record": "data.on_bad_record",
    "val_fraction": "data.val_fraction",
    "mode": "classify.mode",
    "lora_rank": "classify.lora.rank",
    "lora_alpha": "classify.lora.alpha",
    "class_weights": "classify.class_weights",
    **training_flag_keys("classify.train"),
}

_DESCRIPTION = """\
Text classification (sentiment, routing, tagging) with small models:
  train    labelled files + a model -> a classifier, evaluated on held-out data
  eval     a classifier + labelled files -> accuracy, macro-F1, per-class precision/recall,
           calibration (ECE) and a confusion-matrix PNG
  predict  a classifier + texts (files or stdin) -> one JSON line per text with its label and
           the probability of every label
  distill  a classifier (teacher) -> a student of half its layers, DistilBERT-style
Any model works as the body: a PocketLM model or an imported Hugging Face folder (decoders:
the last real token is classified; BERT, DistilBERT, ALBERT, MobileBERT encoders: [CLS]).
Data: csv, tsv, jsonl, json, parquet or `datasets` folders with a text and a label column
(string or integer labels, any number of classes). `pocketlm serve` of a classifier answers
POST /v1/classify; `pocketlm export hf` writes a folder AutoModelForSequenceClassification loads.
"""


def register(subparsers) -> None:
    p = add_parser(
        subparsers,
        "classify",
        help="train, evaluate and run text classifiers (sentiment, topics, routing)",
        description=_DESCRIPTION,
        examples=(
            "  pocketlm classify train --model runs/pretrain --data reviews.csv --out runs/sentiment\n"
            "  pocketlm classify train --model ~/models/bert-tiny --data train.tsv --val test.tsv "
            "--out runs/bert\n"
            "  pocketlm classify train --model runs/pretrain --data t.jsonl --mode lora --out runs/cl\n"
            "  pocketlm classify eval --model runs/sentiment --data test.tsv --out runs/sentiment-eval\n"
            "  echo 'a wonderful film' | pocketlm classify predict --model runs/sentiment\n"
            "  pocketlm classify distill --teacher runs/bert --data train.tsv --out runs/student"
        ),
    )
    sub = p.add_subparsers(
        dest="classify_command", required=True, metavar="{train,eval,predict,distill}"
    )
    _register_train(sub)
    _register_eval(sub)
    _register_predict(sub)
    _register_distill(sub)


def _data_options(p: argparse.ArgumentParser, *, labels: bool = True) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--text-column", help="the column with the text (default: text)")
    if labels:
        g.add_argument("--label-column", help="the column with the label (default: label)")
        g.add_argument(
            "--on-bad-record", choices=["error", "skip"],
            help="a bad row stops with its file and line (error, the default) or is counted (skip)",
        )  # fmt: skip


def _register_train(sub) -> None:
    p = add_parser(
        sub, "train", help="train a classifier on labelled files",
        description=(
            "Put a classification head on --model (or keep the head of a classifier) and train\n"
            "on labelled files through PocketLM's training loop. Modes: full (every weight, the\n"
            "default), lora (a LoRA adapter on the body plus the head: small and fast) or head\n"
            "(a frozen body: only the head trains). Validation: --val files, else a stratified\n"
            "--val-fraction of --data; it is evaluated at the end into RUN/eval/ (metrics.json,\n"
            "report.md, confusion.png, failures.jsonl). Class imbalance is reported; weigh the\n"
            "loss with --class-weights. The run directory holds checkpoints/ (--resume),\n"
            "metrics.jsonl, loss.png and model/ (a classifier, or with --mode lora an adapter)."
        ),
        examples=(
            "  pocketlm classify train --model runs/pretrain --data reviews.csv --out runs/cl\n"
            "  pocketlm classify train --model runs/pretrain --data t.parquet --text-column review "
            "--label-column stars --out runs/stars"
        ),
    )  # fmt: skip
    p.add_argument("--model", required=True, help="the body: a model directory or an HF folder")
    p.add_argument("--data", nargs="+", required=True, metavar="FILE", help="labelled files")
    p.add_argument("--val", nargs="+", metavar="FILE", help="held-out labelled files")
    p.add_argument("--val-fraction", type=float, help="held out without --val (default: 0.1)")
    p.add_argument("--out", required=True, help="run directory")
    _data_options(p)
    m = p.add_argument_group("model")
    m.add_argument("--mode", choices=["full", "lora", "head"], help="what trains (default: full)")
    m.add_argument("--lora-rank", type=int, help="LoRA rank with --mode lora (default: 8)")
    m.add_argument("--lora-alpha", type=float, help="LoRA alpha (default: 16)")
    m.add_argument(
        "--class-weights", type=lambda s: [float(x) for x in s.split(",")],
        help="comma-separated loss weight per label, in label order (imbalanced data)",
    )  # fmt: skip
    run = p.add_argument_group("training")
    add_training_options(run, lr_help="peak learning rate (default: 1e-4)", seed_help="seed")
    run.add_argument("--resume", action="store_true", help="continue the run in --out")
    add_config_options(p)
    p.set_defaults(handler=_train)


def _register_eval(sub) -> None:
    p = add_parser(
        sub, "eval", help="evaluate a classifier on labelled files",
        description=(
            "Classify labelled files and write a report directory: metrics.json (accuracy,\n"
            "macro-F1, per-class precision/recall/F1, confusion matrix, expected calibration\n"
            "error, log loss), report.md, confusion.png and failures.jsonl (the misclassified\n"
            "rows with their probabilities)."
        ),
        examples="  pocketlm classify eval --model runs/cl --data test.tsv --out runs/cl-eval",
    )  # fmt: skip
    p.add_argument("--model", required=True, help="a classifier (model dir, run, HF folder)")
    p.add_argument("--adapter", help="a LoRA classifier adapter on --model")
    p.add_argument("--data", nargs="+", required=True, metavar="FILE", help="labelled files")
    p.add_argument("--out", required=True, help="report directory")
    p.add_argument("--batch-size", type=int, default=32, help="texts per forward (default: 32)")
    _data_options(p)
    p.set_defaults(handler=_eval)


def _register_predict(sub) -> None:
    p = add_parser(
        sub, "predict", help="label texts from files or stdin (JSON lines out)",
        description=(
            "Classify texts and print one JSON line per text, in input order: {\"text\",\n"
            "\"label\", \"probabilities\": {label: p}, \"truncated\"}. Input: stdin (or '-') and\n"
            ".txt files give a text per non-empty line; jsonl/json/csv/tsv/parquet files the\n"
            "--text-column of each record. A text longer than the context is cut (truncated: true)."
        ),
        examples=(
            "  echo 'what a waste of two hours' | pocketlm classify predict --model runs/cl\n"
            "  pocketlm classify predict --model runs/cl reviews.csv --text-column review > out.jsonl"
        ),
    )  # fmt: skip
    p.add_argument("inputs", nargs="*", metavar="FILE", help="input files (default: stdin)")
    p.add_argument("--model", required=True, help="a classifier (model dir, run, HF folder)")
    p.add_argument("--adapter", help="a LoRA classifier adapter on --model")
    p.add_argument("--batch-size", type=int, default=32, help="texts per forward (default: 32)")
    _data_options(p, labels=False)
    p.set_defaults(handler=_predict)


def _register_distill(sub) -> None:
    p = add_parser(
        sub, "distill", help="distill a classifier into a student of half its layers",
        description=(
            "DistilBERT-style: the student keeps every second layer of the teacher (and its\n"
            "embeddings and head) and learns from the teacher's softened class probabilities,\n"
            "the true labels and the teacher's final hidden states (cosine), through the one\n"
            "training loop. The student is an ordinary classifier model."
        ),
        examples="  pocketlm classify distill --teacher runs/cl --data train.tsv --out runs/student",
    )  # fmt: skip
    p.add_argument("--teacher", required=True, help="the classifier to distill")
    p.add_argument("--data", nargs="+", required=True, metavar="FILE", help="labelled files")
    p.add_argument("--val", nargs="+", metavar="FILE", help="held-out labelled files")
    p.add_argument("--val-fraction", type=float, help="held out without --val (default: 0.1)")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--temperature", type=float, default=2.0, help="softening (default: 2)")
    _data_options(p)
    run = p.add_argument_group("training")
    add_training_options(run, lr_help="peak learning rate (default: 1e-4)", seed_help="seed")
    run.add_argument("--resume", action="store_true", help="continue the run in --out")
    add_config_options(p)
    p.set_defaults(handler=_distill)


def _print_metrics(metrics: dict | None, where: str) -> None:
    if metrics:
        print(
            f"accuracy {metrics['accuracy']:.2%}, macro-F1 {metrics['macro_f1']:.4f}, "
            f"ECE {metrics['ece']:.4f} on {metrics['n']} held-out texts (report: {where})"
        )


def _train(args: argparse.Namespace) -> int:
    from pocketlm.pipelines.classify import ClassifyRunConfig, train_from_files

    training_budget(args)
    config = config_from_args(ClassifyRunConfig, args, _FLAGS)
    result, metrics = train_from_files(
        args.model, args.data, args.out, config, val_files=args.val or (),
        resume=args.resume, command=command_line(),
    )  # fmt: skip
    _print_metrics(metrics, f"{args.out}/eval")
    print(result.model_dir)
    return 0


def _eval(args: argparse.Namespace) -> int:
    from pocketlm.pipelines.classify import ClassifyDataConfig, evaluate_files

    data = ClassifyDataConfig(
        text_column=args.text_column or "text",
        label_column=args.label_column or "label",
        on_bad_record=args.on_bad_record or "error",
    )
    metrics = evaluate_files(
        args.model, args.data, args.out, data, adapter=args.adapter, batch_size=args.batch_size
    )
    from pocketlm.evals.classify_metrics import format_report

    print(format_report(metrics))
    print(args.out)
    return 0


def _predict(args: argparse.Namespace) -> int:
    from pocketlm.pipelines.classify import predict_lines, read_texts

    texts = read_texts(args.inputs, sys.stdin, args.text_column or "text")
    predict_lines(args.model, texts, sys.stdout, adapter=args.adapter, batch_size=args.batch_size)
    return 0


def _distill(args: argparse.Namespace) -> int:
    from pocketlm.pipelines.classify import ClassifyRunConfig, distill_from_files

    training_budget(args)
    config = config_from_args(ClassifyRunConfig, args, _FLAGS)
    result, metrics = distill_from_files(
        args.teacher, args.data, args.out, config, temperature=args.temperature,
        val_files=args.val or (), resume=args.resume, command=command_line(),
    )  # fmt: skip
    _print_metrics(metrics, f"{args.out}/eval")
    print(result.model_dir)
    return 0
