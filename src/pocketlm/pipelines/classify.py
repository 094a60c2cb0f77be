"""`pocketlm classify`: labelled files -> a trained classifier with its evaluation; evaluation
of a classifier on labelled files; predictions for texts. Chains data/classify_data (reading,
labels, split), train/tasks/classify (the one loop), engine/classify (inference) and
evals/classify_metrics (accuracy, macro-F1, per-class scores, calibration, confusion PNG).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

from pocketlm.common.errors import InputError
from pocketlm.common.manifest import ArtifactWriter, parent_ref
from pocketlm.data.classify_data import (
    LabelledExample,
    class_balance,
    label_names,
    read_labelled,
    split_labelled,
)
from pocketlm.train.tasks.classify import ClassifyConfig

log = logging.getLogger("pocketlm.classify")
EVAL_KIND = "classify-eval"


@dataclass(frozen=True)
class ClassifyDataConfig:
    """Where the text and label are, what happens to bad rows, the held-out share without a
    validation file (stratified by label, seeded)."""

    text_column: str = "text"
    label_column: str = "label"
    on_bad_record: str = "error"  # "error" | "skip"
    val_fraction: float = 0.1
    seed: int = 0


@dataclass(frozen=True)
class ClassifyRunConfig:
    """`pocketlm classify train` settings: the data's and the training's."""

    data: ClassifyDataConfig = field(default_factory=ClassifyDataConfig)
    classify: ClassifyConfig = field(default_factory=ClassifyConfig)


def _read(files: Sequence[str], data: ClassifyDataConfig) -> Any:
    return read_labelled(
        files,
        text_column=data.text_column,
        label_column=data.label_column,
        on_bad=data.on_bad_record,  # type: ignore[arg-type]
    )


@dataclass(frozen=True)
class _Prepared:
    """Labelled files ready for a classifier's training: the model directory, the class names,
    the held-out examples (for the report), both sides tokenized, the loop's settings with ctx
    at most the model's context, and the data report."""

    base: Path
    names: tuple[str, ...]
    val_examples: list[LabelledExample]
    train_tokens: Any
    val_tokens: Any
    train: Any  # TrainConfig
    report: dict[str, Any]


def _prepare(
    model: str | Path,
    data_files: Sequence[str],
    val_files: Sequence[str],
    config: ClassifyRunConfig,
    names: Sequence[str] | None = None,
) -> _Prepared:
    """Read, split (without val_files: a stratified share), check the labels (against `names`,
    else the data's own), warn of imbalance and tokenize with the model's tokenizer."""
    from pocketlm.checkpoint.model_check import check_model_dir
    from pocketlm.data.classify_loader import encode_labelled
    from pocketlm.interop.open_model import model_dir as resolve_model

    data = config.data
    train_set = _read(data_files, data)
    val_set = _read(val_files, data) if val_files else None
    found = label_names(train_set, *([val_set] if val_set else []))  # unknown labels refused
    names = tuple(names) if names is not None else found
    if val_set is not None:
        train_ex, val_ex = train_set.examples, val_set.examples
    else:
        train_ex, val_ex = split_labelled(train_set.examples, data.val_fraction, data.seed)
    balance = class_balance(train_ex, names)
    if balance["warning"]:
        log.warning("%s", balance["warning"])
    base = resolve_model(model)
    checked = check_model_dir(base)
    train, context = config.classify.train, checked.config.max_seq_len
    if train.ctx > context:  # texts are cut to ctx tokens: at most the model's
        log.info("texts cut at the model's context, %d tokens", context)
        train = replace(train, ctx=context)
    tokenizer = checked.tokenizer
    report = {
        "train_data": train_set.report,
        "val_data": val_set.report if val_set else {"split_from_train": data.val_fraction},
        "class_balance": balance,
    }
    return _Prepared(
        base, names, list(val_ex), encode_labelled(tokenizer, *_columns(train_ex), names),
        encode_labelled(tokenizer, *_columns(val_ex), names) if val_ex else None, train, report,
    )  # fmt: skip


def train_from_files(
    model: str | Path,
    data_files: Sequence[str],
    out: str | Path,
    config: ClassifyRunConfig,
    *,
    val_files: Sequence[str] = (),
    resume: bool = False,
    command: Sequence[str] | None = None,
) -> tuple[Any, dict[str, Any] | None]:
    """Train a classifier of `model` on labelled files into the run `out`; its validation set
    (val_files, else a stratified share) is evaluated at the end into out/eval/. Returns
    (RunResult, the evaluation's metrics or None without validation examples)."""
    from pocketlm.train.tasks.classify import train_classifier

    p = _prepare(model, data_files, val_files, config)
    settings = replace(config.classify, train=p.train)
    result = train_classifier(
        p.base, None if _is_classifier(p.base) else p.names, p.train_tokens, p.val_tokens, out,
        settings, data_report=p.report, resume=resume, command=command,
    )  # fmt: skip
    if not p.val_examples:
        return result, None
    adapter = result.model_dir if settings.mode == "lora" else None
    classifier = p.base if adapter else result.model_dir
    return result, evaluate_examples(
        classifier, p.val_examples, Path(out) / "eval", adapter=adapter
    )


def distill_from_files(
    teacher: str | Path,
    data_files: Sequence[str],
    out: str | Path,
    config: ClassifyRunConfig,
    *,
    temperature: float = 2.0,
    val_files: Sequence[str] = (),
    resume: bool = False,
    command: Sequence[str] | None = None,
) -> tuple[Any, dict[str, Any] | None]:
    """Distil the classifier `teacher` into a student of every second layer on labelled files
    (train/tasks/distill_classify.py), evaluated at the end into out/eval/ like `train`."""
    from pocketlm.interop.open_model import model_dir as resolve_model
    from pocketlm.train.tasks.distill_classify import (
        DistillClassifyConfig,
        distill_classifier,
        teacher_labels,
    )

    names = teacher_labels(resolve_model(teacher))  # label ids in the teacher's order
    p = _prepare(teacher, data_files, val_files, config, names)
    settings = DistillClassifyConfig(temperature=temperature, train=p.train)
    result = distill_classifier(
        p.base, p.train_tokens, p.val_tokens, out, settings, data_report=p.report,
        resume=resume, command=command,
    )  # fmt: skip
    if not p.val_examples:
        return result, None
    return result, evaluate_examples(result.model_dir, p.val_examples, Path(out) / "eval")


def _is_classifier(model_dir: Path) -> bool:
    from pocketlm.engine.load import classifier_labels

    return bool(classifier_labels(model_dir))


def _columns(examples: Sequence[LabelledExample]) -> tuple[list[str], list[str]]:
    return [e.text for e in examples], [e.label for e in examples]


def evaluate_files(
    model: str | Path,
    files: Sequence[str],
    out: str | Path,
    data: ClassifyDataConfig | None = None,
    *,
    adapter: str | Path | None = None,
    batch_size: int = 32,
) -> dict[str, Any]:
    """Evaluate a classifier on labelled files into the report directory `out` (metrics.json,
    report.md, confusion.png, failures.jsonl); returns the metrics."""
    labelled = _read(files, data or ClassifyDataConfig())
    return evaluate_examples(
        model, labelled.examples, out, adapter=adapter, batch_size=batch_size,
        data_report=labelled.report,
    )  # fmt: skip


def evaluate_examples(
    model: str | Path,
    examples: Sequence[LabelledExample],
    out: str | Path,
    *,
    adapter: str | Path | None = None,
    batch_size: int = 32,
    data_report: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Classify `examples` and write their metrics to the report directory `out`."""
    import numpy as np

    from pocketlm.engine.classify import open_classifier
    from pocketlm.evals.classify_metrics import (
        classification_metrics,
        format_report,
        plot_confusion,
    )

    classifier = open_classifier(model, adapter=adapter)
    labels = list(classifier.labels)
    unknown = sorted({e.label for e in examples} - set(labels))
    if unknown:
        raise InputError(
            f"labels {unknown[:5]} in the data are not among the classifier's {labels}",
            hint="evaluate on data with the classes the model was trained on",
        )
    predictions = classifier.predict([e.text for e in examples], batch_size=batch_size)
    probs = np.array([[p.probabilities[name] for name in labels] for p in predictions])
    truth = [labels.index(e.label) for e in examples]
    metrics = classification_metrics(truth, probs, labels)
    metrics["truncated"] = sum(p.truncated for p in predictions)
    failures = [
        {
            "source": e.source,
            "text": e.text,
            "label": e.label,
            "predicted": p.label,
            "probabilities": p.probabilities,
        }
        for e, p in zip(examples, predictions, strict=True)
        if p.label != e.label
    ]
    parents = [parent_ref(Path(model))] if (Path(model) / "manifest.json").is_file() else []
    with ArtifactWriter(
        out, EVAL_KIND, config={"model": str(model), "adapter": str(adapter or "")},
        parents=parents, overwrite=True,
    ) as art:  # fmt: skip
        art.path("metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        art.path("report.md").write_text(format_report(metrics) + "\n")
        plot_confusion(metrics["confusion"], labels, art.path("confusion.png"))
        with art.path("failures.jsonl").open("w", encoding="utf-8") as fh:
            for row in failures:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        art.commit(
            {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"],
             "ece": metrics["ece"], "n": metrics["n"], "data": data_report or {}}
        )  # fmt: skip
    return metrics


def read_texts(sources: Sequence[str], stdin: TextIO, text_column: str = "text") -> Iterator[str]:
    """Texts to classify: one per non-empty line of stdin (no sources, or "-") and of .txt
    files; the text column of every record of other files (jsonl, json, csv, tsv, parquet,
    datasets folders), a record without it an error naming its file and line."""
    for source in sources or ["-"]:
        if source == "-":
            yield from (line.rstrip("\n") for line in stdin if line.strip())
        elif source.endswith(".txt"):
            with open(source, encoding="utf-8") as fh:
                yield from (line.rstrip("\n") for line in fh if line.strip())
        else:
            yield from _record_texts(source, text_column)


def _record_texts(source: str, column: str) -> Iterator[str]:
    from pocketlm.data.accounting import KEPT, Accounting
    from pocketlm.data.record_readers import iter_rows
    from pocketlm.data.records import BadRecordLog
    from pocketlm.data.source_options import SourceOptions

    book = Accounting(BadRecordLog(policy="error"), lambda n: None)
    for row in iter_rows(source, SourceOptions(), book):
        fields = row.fields
        text = fields.get(column) if isinstance(fields, dict) else None
        if not isinstance(text, str):
            columns = ", ".join(map(str, fields)) if isinstance(fields, dict) else "none"
            raise row.error(
                f"no text in column '{column}' (columns: {columns})",
                hint="choose the column with --text-column NAME",
            )
        doc = row.ledger.emit("", row.origin, row.span_bytes)
        book.settle(doc.file_id, KEPT, row.span_bytes)
        yield text


def predict_lines(
    model: str | Path,
    texts: Iterable[str],
    out: TextIO,
    *,
    adapter: str | Path | None = None,
    batch_size: int = 32,
) -> int:
    """Classify texts in batches, writing one JSON line each ({"text", "label",
    "probabilities", "truncated"}) in input order; returns how many."""
    from pocketlm.engine.classify import open_classifier

    classifier = open_classifier(model, adapter=adapter)
    count, batch = 0, []
    for text in texts:
        batch.append(text)
        if len(batch) == batch_size * 8:  # a few batches at a time: length-sorted inside
            count += _write(classifier, batch, out, batch_size)
            batch = []
    if batch:
        count += _write(classifier, batch, out, batch_size)
    return count


def _write(classifier, texts: list[str], out: TextIO, batch_size: int) -> int:
    for text, p in zip(texts, classifier.predict(texts, batch_size=batch_size), strict=True):
        row = {"text": text, "label": p.label, "probabilities": p.probabilities}
        row["truncated"] = p.truncated
        out.write(json.dumps(row, ensure_ascii=False) + "\n")
    out.flush()
    return len(texts)
