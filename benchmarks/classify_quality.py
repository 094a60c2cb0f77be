"""Text classification quality and speed on the movie-review sentiment set: test accuracy,
macro-F1 and calibration (pocketlm.evals.classify_metrics), training time, and inference
sentences/s at batch 1 and batch 32, one row per classifier.

    pip install scikit-learn        # the TF-IDF + logistic-regression baseline
    python benchmarks/classify_quality.py                     # every variant
    python benchmarks/classify_quality.py --variants tfidf_logreg

Data: ../shared/data/sentiment/movie-reviews-{train,test}.tsv (columns id, label, rating, text;
the fixed split of ../shared/data/README.md), read through pocketlm.data.classify_data like any
user's labelled file. Results: benchmarks/results/classify_quality.json and a markdown table.

A variant is a function (data, args) -> row dict: it trains on data.train (it may carve its own
validation split out of it with split_labelled; the test set is only for scoring), then hands
its `predict_proba(texts) -> (N, C) probabilities` to `score`, which measures every row the same
way. PocketLM classifiers are added to VARIANTS as more functions.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "sentiment"
RESULTS = Path(__file__).parent / "results" / "classify_quality.json"
ProbaFn = Callable[[Sequence[str]], np.ndarray]  # texts -> (N, C) probabilities


@dataclass(frozen=True)
class SentimentData:
    """The fixed train / test split, as texts and class ids in `labels` order."""

    labels: tuple[str, ...]
    train_texts: list[str]
    train_ids: np.ndarray  # (N_train,)
    test_texts: list[str]
    test_ids: np.ndarray  # (N_test,)
    report: dict[str, Any]


def load_data(folder: Path) -> SentimentData:
    """Both files read under on_bad="error": a row the reader refuses stops the benchmark."""
    from pocketlm.data.classify_data import class_balance, label_names, read_labelled

    train = read_labelled(folder / "movie-reviews-train.tsv")
    test = read_labelled(folder / "movie-reviews-test.tsv")
    labels = label_names(train, test)
    index = {name: k for k, name in enumerate(labels)}
    report = {
        "folder": str(folder),
        "train": class_balance(train.examples, labels),
        "test": class_balance(test.examples, labels),
    }
    return SentimentData(
        labels,
        [e.text for e in train.examples],
        np.array([index[e.label] for e in train.examples], dtype=np.int64),
        [e.text for e in test.examples],
        np.array([index[e.label] for e in test.examples], dtype=np.int64),
        report,
    )


def sentences_per_second(
    predict_proba: ProbaFn, texts: Sequence[str], batch: int, limit: int
) -> float:
    """Texts classified per second in batches of `batch`, over the first `limit` texts (after
    a short warm-up)."""
    texts = list(texts[:limit])
    predict_proba(texts[:batch])  # warm-up: lazy init, caches
    t0 = time.perf_counter()
    for first in range(0, len(texts), batch):
        predict_proba(texts[first : first + batch])
    return len(texts) / (time.perf_counter() - t0)


def score(
    name: str,
    description: str,
    train_seconds: float,
    predict_proba: ProbaFn,
    data: SentimentData,
    args: argparse.Namespace,
    **details: Any,
) -> dict[str, Any]:
    """The row of one trained classifier: test metrics, training time, throughput."""
    from pocketlm.evals.classify_metrics import classification_metrics

    probs = predict_proba(data.test_texts)  # (N_test, C)
    metrics = classification_metrics(data.test_ids, probs, data.labels)
    return {
        "variant": name,
        "description": description,
        "test_accuracy": metrics["accuracy"],
        "test_macro_f1": metrics["macro_f1"],
        "test_ece": metrics["ece"],
        "train_seconds": train_seconds,
        "sentences_per_s_batch1": sentences_per_second(
            predict_proba, data.test_texts, 1, args.batch1_limit
        ),
        "sentences_per_s_batch32": sentences_per_second(
            predict_proba, data.test_texts, 32, len(data.test_texts)
        ),
        "metrics": metrics,
        **details,
    }


def majority(data: SentimentData, args: argparse.Namespace) -> dict[str, Any]:
    """The floor: always the most frequent training class."""
    t0 = time.perf_counter()
    prior = np.bincount(data.train_ids, minlength=len(data.labels)) / len(data.train_ids)
    train_seconds = time.perf_counter() - t0
    guess = np.eye(len(data.labels))[prior.argmax()]  # (C,) one-hot

    def predict_proba(texts: Sequence[str]) -> np.ndarray:
        return np.tile(guess, (len(texts), 1))  # (N, C)

    description = "the most frequent training class"
    return score("majority", description, train_seconds, predict_proba, data, args)


def tfidf_logreg(data: SentimentData, args: argparse.Namespace) -> dict[str, Any]:
    """The bar to beat: TF-IDF features + logistic regression (scikit-learn). The features (word
    1-2-grams, with or without character 2-5-grams) and C are chosen by 5-fold cross-validation
    on the training set only; the test set is scored once."""
    try:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import GridSearchCV
        from sklearn.pipeline import FeatureUnion, Pipeline
    except ImportError:
        sys.exit("the tfidf_logreg baseline needs scikit-learn: pip install scikit-learn")

    def words() -> TfidfVectorizer:
        return TfidfVectorizer(sublinear_tf=True, strip_accents="unicode", ngram_range=(1, 2))

    def chars() -> TfidfVectorizer:
        return TfidfVectorizer(
            sublinear_tf=True, strip_accents="unicode", analyzer="char_wb", ngram_range=(2, 5)
        )

    pipeline = Pipeline(
        [
            ("features", FeatureUnion([("word", words()), ("char", chars())])),
            ("logreg", LogisticRegression(max_iter=3000)),
        ]
    )
    grid = {"features__char": ["drop", chars()], "logreg__C": [4.0, 8.0, 16.0, 32.0]}
    t0 = time.perf_counter()
    search = GridSearchCV(pipeline, grid, cv=5, scoring="accuracy", n_jobs=1)
    search.fit(data.train_texts, data.train_ids)
    search_seconds = time.perf_counter() - t0
    best = search.best_estimator_
    t0 = time.perf_counter()
    best.fit(data.train_texts, data.train_ids)  # the chosen setting, timed alone
    train_seconds = time.perf_counter() - t0
    classes = list(best.classes_)
    order = [classes.index(k) for k in range(len(data.labels))]  # sklearn's columns -> ours

    def predict_proba(texts: Sequence[str]) -> np.ndarray:
        return best.predict_proba(list(texts))[:, order]  # (N, C)

    union = dict(best.named_steps["features"].transformer_list)
    used = {k: v for k, v in union.items() if v != "drop"}
    chosen = {
        "features": " + ".join(
            "word 1-2-grams" if k == "word" else "char_wb 2-5-grams" for k in used
        ),
        "C": search.best_params_["logreg__C"],
    }
    return score(
        "tfidf_logreg",
        "TF-IDF + logistic regression (scikit-learn), features and C by 5-fold CV on train",
        train_seconds,
        predict_proba,
        data,
        args,
        chosen=chosen,
        cv_accuracy=float(search.best_score_),
        cv_results={
            f"{'word' if p['features__char'] == 'drop' else 'word+char'} C={p['logreg__C']:g}": (
                float(m)
            )
            for p, m in zip(
                search.cv_results_["params"], search.cv_results_["mean_test_score"], strict=True
            )
        },
        search_seconds=search_seconds,
        features=sum(len(v.vocabulary_) for v in used.values()),
    )


def _pocketlm_row(
    name: str, description: str, model: Path, run: Path, data: SentimentData, args, **details
) -> dict[str, Any]:
    """Score a trained PocketLM classifier run (its model/ and its training summary)."""
    from pocketlm.engine.classify import open_classifier

    classifier = open_classifier(run / "model", device="cpu")
    order = [list(classifier.labels).index(label) for label in data.labels]

    def predict_proba(texts: Sequence[str]) -> np.ndarray:
        predictions = classifier.predict(list(texts), batch_size=32)
        probs = np.array([[p.probabilities[k] for k in classifier.labels] for p in predictions])
        return probs[:, order]  # (N, C) in the benchmark's label order

    summary = json.loads((run / "model" / "manifest.json").read_text())["summary"]
    return score(
        name, description, float(summary.get("train_seconds", 0.0)), predict_proba, data, args,
        body=str(model), params=summary.get("params"), steps=summary.get("steps"),
        val_accuracy=summary.get("val_accuracy"), **details,
    )  # fmt: skip


def _train_tsv(data_folder: Path, model: Path, run: Path, args, **settings) -> None:
    """`pocketlm classify train` on the training file (10% stratified validation split)."""
    import shutil

    from pocketlm.pipelines.classify import ClassifyRunConfig, train_from_files
    from pocketlm.train.tasks.classify import ClassifyConfig, classify_train_defaults

    shutil.rmtree(run, ignore_errors=True)
    train = replace(
        classify_train_defaults(), budget=args.budget, batch_size=32, ctx=128,
        threads=args.threads, **settings.pop("train", {}),
    )  # fmt: skip
    config = ClassifyRunConfig(classify=ClassifyConfig(train=train, **settings))
    train_from_files(model, [str(data_folder / "movie-reviews-train.tsv")], run, config)


def pocketlm_decoder(data: SentimentData, args: argparse.Namespace) -> dict[str, Any]:
    """PocketLM's TinyStories model (a decoder) with a classification head, full fine-tune."""
    model, run = Path(args.decoder), args.workdir / "decoder"
    if not (run / "model" / "manifest.json").exists():
        _train_tsv(args.data, model, run, args, train={"optim": _adamw(args.lr)})
    return _pocketlm_row(
        "pocketlm_decoder", "TinyStories decoder + head, full fine-tune", model, run, data, args
    )


def pocketlm_decoder_domain(data: SentimentData, args: argparse.Namespace) -> dict[str, Any]:
    """The same after continued pretraining on the review sentences (finetune_quality.py's
    10-minute `finetune --tokens reviews --replay tinystories` run), full fine-tune."""
    model, run = Path(args.domain_decoder), args.workdir / "decoder-domain"
    if not (run / "model" / "manifest.json").exists():
        _train_tsv(args.data, model, run, args, train={"optim": _adamw(args.lr)})
    return _pocketlm_row(
        "pocketlm_decoder_domain", "TinyStories decoder continued on review text + head",
        model, run, data, args,
    )  # fmt: skip


def _adamw(lr: float):
    from pocketlm.train.config import OptimConfig

    return OptimConfig(kind="adamw", lr=lr, weight_decay=0.0)


def pocketlm_encoder(data: SentimentData, args: argparse.Namespace) -> dict[str, Any]:
    """A tiny BERT imported from a Hugging Face folder (random weights: no pretrained weights
    can be downloaded here; WordPiece trained on the training texts), full fine-tune."""
    folder, run = args.workdir / "bert-tiny-hf", args.workdir / "encoder"
    if not (folder / "config.json").exists():
        _tiny_bert(folder, data.train_texts)
    if not (run / "model" / "manifest.json").exists():
        _train_tsv(args.data, folder, run, args, train={"optim": _adamw(args.lr)})
    return _pocketlm_row(
        "pocketlm_encoder", "tiny BERT imported from an HF folder (random init), full fine-tune",
        folder, run, data, args,
    )  # fmt: skip


def _tiny_bert(folder: Path, texts: Sequence[str]) -> None:
    """A 4-layer, 256-wide BertForSequenceClassification folder with its WordPiece tokenizer."""
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    wordpiece = BertWordPieceTokenizer(lowercase=True)
    wordpiece.train_from_iterator(list(texts), vocab_size=8192, min_frequency=2)
    wordpiece.save_model(str(folder))
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
    config = BertConfig(
        vocab_size=wordpiece.get_vocab_size(), hidden_size=256, num_hidden_layers=4,
        num_attention_heads=4, intermediate_size=1024, max_position_embeddings=512,
        id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1},
    )  # fmt: skip
    BertForSequenceClassification(config).save_pretrained(folder)


def pocketlm_distilled(data: SentimentData, args: argparse.Namespace) -> dict[str, Any]:
    """DistilBERT-style student (every second layer) of the run named by --teacher-run."""
    import shutil

    from pocketlm.pipelines.classify import ClassifyRunConfig, distill_from_files
    from pocketlm.train.tasks.classify import ClassifyConfig, classify_train_defaults

    teacher = args.workdir / args.teacher_run / "model"
    run = args.workdir / f"distilled-{args.teacher_run}"
    if not (run / "model" / "manifest.json").exists():
        shutil.rmtree(run, ignore_errors=True)
        train = replace(
            classify_train_defaults(), budget=args.budget, batch_size=32, ctx=128,
            threads=args.threads, optim=_adamw(args.lr),
        )  # fmt: skip
        config = ClassifyRunConfig(classify=ClassifyConfig(train=train))
        distill_from_files(teacher, [str(args.data / "movie-reviews-train.tsv")], run, config)
    return _pocketlm_row(
        "pocketlm_distilled", f"student of {args.teacher_run}: every second layer, distilled",
        teacher, run, data, args, teacher=str(teacher),
    )  # fmt: skip


VARIANTS: dict[str, Callable[[SentimentData, argparse.Namespace], dict[str, Any]]] = {
    "majority": majority,
    "tfidf_logreg": tfidf_logreg,
    "pocketlm_decoder": pocketlm_decoder,
    "pocketlm_decoder_domain": pocketlm_decoder_domain,
    "pocketlm_encoder": pocketlm_encoder,
    "pocketlm_distilled": pocketlm_distilled,
}


def _blas_threads(threads: int) -> contextlib.AbstractContextManager:
    """numpy / scipy BLAS limited to `threads` (threadpoolctl comes with scikit-learn)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(threads)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """One line per variant: the numbers RESULTS.md quotes."""
    lines = [
        "| variant | test accuracy | macro-F1 | ECE | training | sentences/s batch 1 | "
        "sentences/s batch 32 |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['test_accuracy']:.2%} | {r['test_macro_f1']:.4f} | "
            f"{r['test_ece']:.4f} | {r['train_seconds']:.2f} s | "
            f"{r['sentences_per_s_batch1']:,.0f} | {r['sentences_per_s_batch32']:,.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DATA, help="the sentiment folder")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument(
        "--threads", type=int, default=2, help="torch and BLAS threads (the goal's 2 cores)"
    )
    parser.add_argument(
        "--batch1-limit", type=int, default=500, help="test sentences timed at batch 1"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/pocketlm-classify"))
    parser.add_argument(
        "--decoder", default="/tmp/pocketlm-ftq/runs/ftq-base/model",
        help="the PocketLM decoder to put a head on (benchmarks/finetune_quality.py makes one)",
    )  # fmt: skip
    parser.add_argument(
        "--domain-decoder", default="/tmp/pocketlm-ftq/reviews-cpt/model",
        help="the decoder continued on review text (benchmarks/finetune_quality.py makes one)",
    )  # fmt: skip
    parser.add_argument("--budget", default="10m", help="training budget per PocketLM variant")
    parser.add_argument("--lr", type=float, default=3e-4, help="PocketLM variants' peak lr")
    parser.add_argument("--teacher-run", default="decoder", help="decoder or encoder")
    args = parser.parse_args()
    if not (args.data / "movie-reviews-train.tsv").is_file():
        sys.exit(f"no sentiment data in {args.data} (see ../shared/data/README.md)")

    import torch

    from machine import describe_machine

    torch.set_num_threads(args.threads)
    data = load_data(args.data)
    print(f"train {len(data.train_texts)}, test {len(data.test_texts)}, labels {data.labels}")
    rows = []
    with _blas_threads(args.threads):
        for name in args.variants:
            print(f"-- {name}", flush=True)
            rows.append(VARIANTS[name](data, args))
    if args.out.is_file():  # rows of variants not run this time are kept
        kept = json.loads(args.out.read_text())["rows"]
        ran = {r["variant"] for r in rows}
        rows = [r for r in kept if r["variant"] not in ran] + rows
    report = {
        "benchmark": "classify_quality",
        "command": " ".join(sys.argv),
        "machine": describe_machine(),
        "threads": args.threads,
        "data": data.report,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(markdown_table(rows))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
