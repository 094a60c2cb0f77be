"""Labelled text for classification: (text, label) records from files, every record accounted for.

Records come from jsonl, json, csv / tsv, parquet files, folders of them and `datasets`
save_to_disk folders (record_readers.py), with the text and the label in two named columns.
Labels are strings or integers, kept as their names: an integer (or integer-like text, so a CSV's
"1" and a JSON 1 are one class) becomes its decimal string. Bad records (no text, empty text,
text that is not a string, no label, a label that is neither a string nor an integer) are handled
as in `data build`: under on_bad="error" the first one stops the reading naming its file and line
(and, for a missing column, the columns the record has); under "skip" each is counted by reason,
the first ones kept for the report. Per file and in total, records in = kept + dropped by reason.

The classes: label_names (a fixed order), split_labelled (a stratified validation split by a
seeded hash of the text) and class_balance (counts, shares, the imbalance ratio, a warning).
"""

from __future__ import annotations

import math
import numbers
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pocketlm.common.errors import ConfigError, InputError
from pocketlm.data.accounting import KEPT, Accounting
from pocketlm.data.dedup import content_hash
from pocketlm.data.record_readers import describe_row_source, iter_rows
from pocketlm.data.records import BadRecordLog, OnBadRecord
from pocketlm.data.sft_formats import RecordProblem
from pocketlm.data.source_options import SourceOptions

# Column names that usually hold the text or the label: named in the error when the asked-for
# column is missing and one of these is there.
TEXT_ALIASES = ("text", "sentence", "review", "content", "document", "utterance", "body", "message")
LABEL_ALIASES = ("label", "labels", "sentiment", "class", "category", "target", "intent", "y")
_INTEGER = re.compile(r"[+-]?\d{1,30}")  # longer digit strings stay names
IMBALANCE_WARNING_RATIO = 3.0  # largest class / smallest class above this gets a warning


@dataclass(frozen=True, slots=True)
class LabelledExample:
    """One text and its class name, with where it came from ("file:line" or "name#row=N")."""

    text: str
    label: str
    source: str


@dataclass
class LabelledSet:
    """The examples read, in file order, and the report of how every record was settled."""

    examples: list[LabelledExample]
    report: dict[str, Any]

    @property
    def skipped(self) -> int:
        """Bad records counted and skipped (always 0 under on_bad="error")."""
        return int(self.report["bad_records"]["total"])

    def label_counts(self) -> Counter:
        """Examples per label."""
        return Counter(e.label for e in self.examples)


def read_labelled(
    paths: str | Path | Sequence[str | Path],
    *,
    text_column: str = "text",
    label_column: str = "label",
    on_bad: OnBadRecord = "error",
    hf_split: str = "train",
    max_record_bytes: int = 0,
) -> LabelledSet:
    """The labelled examples of files / folders / datasets folders, bad records raised (naming
    file and line) or counted under `on_bad`; an error when none is left."""
    specs = [str(paths)] if isinstance(paths, str | Path) else [str(p) for p in paths]
    if not specs:
        raise InputError(
            "no labelled data given", hint="name .csv/.tsv/.jsonl/.json/.parquet files"
        )
    if on_bad not in ("error", "skip"):
        raise ValueError(f"on_bad must be 'error' or 'skip', not {on_bad!r}")
    for spec in specs:
        describe_row_source(spec)  # fail early on a missing path or an unknown type
    bad = BadRecordLog(policy=on_bad)
    book = Accounting(bad, lambda n: None)
    opts = SourceOptions(hf_split=hf_split, max_record_bytes=max_record_bytes)
    examples = list(_read(specs, opts, book, text_column, label_column))
    if book.open_files:  # a reader or this loop lost track of a record: a bug, not bad input
        raise RuntimeError(f"{book.open_files} input files were never settled")
    accounting = book.summary()
    if not examples:
        dropped = accounting["records"]["dropped"]
        reasons = ", ".join(f"{k}: {n}" for k, n in Counter(dropped).most_common()) or "none"
        raise InputError(
            f"no labelled examples: {accounting['records']['in']} records read, dropped: {reasons}",
            path=", ".join(specs),
            hint=f"check the data and the columns (text: '{text_column}', label: '{label_column}')",
        )
    report = {
        "files": accounting["files"],
        "records": accounting["records"],
        "bad_records": {"total": bad.total, "counts": dict(bad.counts), "examples": bad.examples},
        "named_files": book.named_first,  # files that lost records or were skipped
        "columns": {"text": text_column, "label": label_column},
        "labels": dict(sorted(Counter(e.label for e in examples).items())),
    }
    return LabelledSet(examples, report)


def _read(
    specs: Sequence[str], opts: SourceOptions, book: Accounting, text_column: str, label_column: str
) -> Iterator[LabelledExample]:
    """Each record settled as soon as it is read: kept, or bad under the book's policy."""
    for spec in specs:
        for row in iter_rows(spec, opts, book):
            try:
                text, label = labelled_fields(row.fields, text_column, label_column)
            except RecordProblem as problem:
                error = row.error(problem.reason, _hint(problem))
                row.ledger.bad(error, problem.kind, row.span_bytes)
                continue
            doc = row.ledger.emit("", row.origin, row.span_bytes)
            book.settle(doc.file_id, KEPT, row.span_bytes)
            yield LabelledExample(text, label, row.origin)


class _ColumnProblem(RecordProblem):
    """A missing column, with the column that probably holds it."""

    def __init__(self, kind: str, reason: str, hint: str | None) -> None:
        super().__init__(kind, reason)
        self.hint = hint


def _hint(problem: RecordProblem) -> str | None:
    return problem.hint if isinstance(problem, _ColumnProblem) else None


def labelled_fields(record: object, text_column: str, label_column: str) -> tuple[str, str]:
    """(text, label name) of one record, or a RecordProblem saying why it cannot be used."""
    if not isinstance(record, Mapping):
        raise RecordProblem("not_a_record", f"a record is an object, not {type(record).__name__}")
    text = _column(record, text_column, "text", TEXT_ALIASES, "missing_text")
    if not isinstance(text, str):
        raise RecordProblem(
            "text_not_string", f"'{text_column}' is {type(text).__name__}, not text"
        )
    if not text.strip():
        raise RecordProblem("empty_text", f"'{text_column}' is empty")
    value = _column(record, label_column, "label", LABEL_ALIASES, "missing_label")
    return text, label_name(value, label_column)


def _column(
    record: Mapping, name: str, role: str, aliases: tuple[str, ...], missing: str
) -> object:
    """The value of a column; a missing column or a null value is a problem of kind `missing`."""
    if name not in record:
        columns = ", ".join(map(str, record)) or "none"
        found = [a for a in aliases if a in record and a != name]
        hint = (
            f"the {role} may be in '{found[0]}': choose its column (--{role}-column {found[0]})"
            if found
            else f"choose the {role} column (--{role}-column NAME)"
        )
        raise _ColumnProblem(missing, f"no {role} column '{name}' (columns: {columns})", hint)
    value = record[name]
    if value is None or (isinstance(value, numbers.Real) and math.isnan(value)):  # pandas' NaN
        raise RecordProblem(missing, f"'{name}' is null")
    return value


def label_name(value: object, column: str = "label") -> str:
    """A label as its class name: strings stripped, integers (and integer-like text, integral
    floats) as decimal strings; anything else is a RecordProblem."""
    if isinstance(value, bool):  # a bool is an int to Python; true/false names are ambiguous
        raise RecordProblem(
            "invalid_label", f"'{column}' is a boolean: write the classes as names or 0/1"
        )
    if isinstance(value, numbers.Integral):  # also numpy's integers
        return str(int(value))
    if isinstance(value, numbers.Real):
        if float(value).is_integer():  # 1.0: an integer column pandas widened for a missing value
            return str(int(value))
        raise RecordProblem(
            "invalid_label", f"'{column}' is {value!r}: a label is a name or an integer"
        )
    if isinstance(value, str):
        name = value.strip()
        if not name:
            raise RecordProblem("missing_label", f"'{column}' is empty")
        return str(int(name)) if _INTEGER.fullmatch(name) else name
    raise RecordProblem(
        "invalid_label",
        f"'{column}' is {type(value).__name__}: a label is a name or an integer",
    )


def label_names(
    *sets: LabelledSet | Iterable[LabelledExample], min_classes: int = 2
) -> tuple[str, ...]:
    """The class names of the first (training) set, integer names in numeric order then the
    others sorted; a label of a later set (validation, test) that training lacks is an error."""
    if not sets:
        raise ValueError("label_names needs at least one set of examples")
    known = {e.label for e in _examples(sets[0])}
    names = tuple(sorted(known, key=_label_order))
    for later in sets[1:]:
        for example in _examples(later):
            if example.label not in known:
                raise InputError(
                    f"label '{example.label}' is not in the training data "
                    f"(its labels: {', '.join(names) or 'none'})",
                    path=example.source,
                    hint="add examples of it to the training data, or fix the label",
                )
    if len(names) < min_classes:
        raise InputError(
            f"classification needs at least {min_classes} classes; the training data has "
            f"{len(names)}" + (f" ({', '.join(names)})" if names else ""),
            hint="check the label column",
        )
    return names


def _label_order(name: str) -> tuple[int, int, str]:
    """Integer names first, by value; then the others by text."""
    return (0, int(name), "") if _INTEGER.fullmatch(name) else (1, 0, name)


def _examples(items: LabelledSet | Iterable[LabelledExample]) -> Iterable[LabelledExample]:
    return items.examples if isinstance(items, LabelledSet) else items


def split_labelled(
    examples: Sequence[LabelledExample], val_share: float, seed: int
) -> tuple[list[LabelledExample], list[LabelledExample]]:
    """(train, val), stratified: each class gives round(n * val_share) examples to validation,
    chosen by a seeded hash of their text (not their order), and keeps at least one in training;
    with a share > 0 at least one example is held out when any class has two. Both sides keep
    the input order."""
    if not 0.0 <= val_share < 1.0:
        raise ConfigError(f"the validation share must be in [0, 1), got {val_share}")
    by_label: dict[str, list[int]] = defaultdict(list)
    for i, example in enumerate(examples):
        by_label[example.label].append(i)
    ranked: dict[str, list[int]] = {}
    to_val: dict[str, int] = {}
    for label, members in by_label.items():
        # Ties (the same text twice) fall back to the input order: still deterministic.
        ranked[label] = sorted(
            members, key=lambda i: (content_hash(f"{seed}\0{examples[i].text}"), i)
        )
        to_val[label] = min(len(members) - 1, math.floor(len(members) * val_share + 0.5))
    if val_share > 0 and not sum(to_val.values()):
        largest = max(by_label, key=lambda k: (len(by_label[k]), k), default=None)
        if largest is not None and len(by_label[largest]) >= 2:
            to_val[largest] = 1
    held = {i for label, order in ranked.items() for i in order[: to_val[label]]}
    train = [e for i, e in enumerate(examples) if i not in held]
    val = [e for i, e in enumerate(examples) if i in held]
    return train, val


def class_balance(examples: Iterable[LabelledExample], labels: Sequence[str]) -> dict[str, Any]:
    """Examples per class (counts, shares), the imbalance ratio (largest / smallest class; None
    when a class has none) and a warning line when a class is missing or the ratio is over 3."""
    counts = Counter(e.label for e in examples)
    unknown = sorted(set(counts) - set(labels))
    if unknown:
        raise InputError(f"labels {unknown} are not among the classes {list(labels)}")
    total = sum(counts.values())
    ordered = {label: counts[label] for label in labels}
    shares = {label: (n / total if total else 0.0) for label, n in ordered.items()}
    largest = max(ordered.values(), default=0)
    smallest = min(ordered.values(), default=0)
    ratio = largest / smallest if smallest else None
    warning = None
    empty = [label for label, n in ordered.items() if n == 0]
    if empty:
        warning = f"no examples of {', '.join(repr(x) for x in empty)} (of {total})"
    elif ratio is not None and ratio > IMBALANCE_WARNING_RATIO:
        big = max(ordered, key=lambda k: ordered[k])
        small = min(ordered, key=lambda k: ordered[k])
        warning = (
            f"imbalanced classes: {big!r} has {largest} examples ({shares[big]:.0%}), {small!r} "
            f"{smallest} ({shares[small]:.0%}), {ratio:.1f}x; accuracy flatters the majority "
            "class: read macro-F1 and the per-class recall"
        )
    return {
        "counts": ordered,
        "shares": shares,
        "total": total,
        "imbalance_ratio": ratio,
        "warning": warning,
    }
