"""Fine-tuning examples: records from files -> messages -> a train / validation split -> token
ids with loss masks, every record accounted for.

Records come from jsonl, json, csv / tsv, parquet files, folders of them and `datasets`
save_to_disk folders (record_readers.py), each in any of the formats of sft_formats.py, detected
per record. Bad records are handled as in `data build`: under on_bad_record="error" the first
one stops the run naming its file, line and field; under "skip" each is counted by reason and
the first ones are kept for the report. Examples longer than the context are dropped or
truncated (too_long), counted either way. Per file and in total, records in = kept + dropped by
reason (data/accounting.py).

The validation examples are a seeded share of the records by content hash (the same
conversation always lands on the same side), or the records of separate validation files.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from pocketlm.common.errors import ConfigError, InputError
from pocketlm.common.log import get_logger
from pocketlm.data.accounting import BAD_PREFIX, KEPT, Accounting
from pocketlm.data.build import is_validation
from pocketlm.data.dedup import content_hash
from pocketlm.data.record_readers import Row, describe_row_source, iter_rows
from pocketlm.data.records import BadRecordLog, OnBadRecord
from pocketlm.data.sft_formats import Messages, RecordProblem, to_messages
from pocketlm.data.sft_tokens import SFTTokens, TooLong, fit_length, sft_tokens, target_count
from pocketlm.data.source_options import SourceOptions
from pocketlm.tokenizer.tokenizer import Tokenizer

TOO_LONG = "too_long"  # outcome of an example longer than the context under too_long="drop"
_MAX_EXAMPLES = 20  # records over the context named in the report (and the log)
_log = get_logger("pocketlm.data.sft")


@dataclass(frozen=True)
class SFTDataConfig:
    """How fine-tuning records become training examples."""

    # share of the records (by content hash) held out for validation when no validation file
    # is given; at least one is held out when there are two or more
    val_fraction: float = 0.05
    split_seed: int = 0
    on_bad_record: OnBadRecord = "error"
    # an example longer than the context: "drop" it, or "truncate" it to the context (it keeps
    # its first tokens; its last reply loses its end) - counted either way
    too_long: TooLong = "drop"
    packing: bool = True  # several short examples per sequence (False: one, padded)
    hf_split: str = "train"  # the split read from a datasets folder holding several
    # extra chat-template variables (e.g. enable_thinking = false, date_string = "26 Jul 2024")
    template_variables: dict[str, Any] = field(default_factory=dict)
    max_record_bytes: int = 0  # a line over this is dropped unread (0: 8 MB)

    def __post_init__(self) -> None:
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError("data.val_fraction must be in [0, 1)")
        if self.too_long not in ("drop", "truncate"):
            raise ConfigError(f"data.too_long must be drop or truncate, not {self.too_long!r}")

    def source_options(self) -> SourceOptions:
        """The readers' options for these settings."""
        return SourceOptions(hf_split=self.hf_split, max_record_bytes=self.max_record_bytes)


@dataclass(frozen=True)
class SFTExample:
    """One record as messages, with where it came from."""

    messages: Messages
    format: str
    origin: str
    row: Row = field(repr=False, compare=False)
    file_id: int = -1


# what a caller derives from each kept example and its (fitted) tokens, kept alongside them
Annotate = Callable[[SFTExample, SFTTokens], Any]


@dataclass
class SFTData:
    """Tokenised training and validation examples and the report of how they were made (with
    `annotate`: its result per example, in the same order)."""

    train: list[SFTTokens]
    val: list[SFTTokens]
    report: dict[str, Any]
    train_notes: list[Any] = field(default_factory=list)
    val_notes: list[Any] = field(default_factory=list)


def read_examples(
    specs: Sequence[str], opts: SourceOptions, book: Accounting, formats: Counter
) -> Iterator[SFTExample]:
    """The examples of the data arguments in order; bad records go to the book's policy."""
    for spec in specs:
        for row in iter_rows(spec, opts, book):
            try:
                kind, messages = to_messages(row.fields)
            except RecordProblem as problem:
                row.ledger.bad(row.error(problem.reason), problem.kind, row.span_bytes)
                continue
            formats[kind] += 1
            doc = row.ledger.emit("", row.origin, row.span_bytes)
            yield SFTExample(messages, kind, row.origin, row, doc.file_id)


def split_examples(
    examples: Sequence[SFTExample], val_fraction: float, seed: int
) -> tuple[list[SFTExample], list[SFTExample]]:
    """(train, val) by a seeded hash of each conversation; with a fraction > 0 and two or more
    examples at least one is held out (the last of the training side)."""
    train: list[SFTExample] = []
    val: list[SFTExample] = []
    for example in examples:
        digest = content_hash(json.dumps(example.messages, sort_keys=True, ensure_ascii=False))
        (val if is_validation(digest, val_fraction, seed) else train).append(example)
    if val_fraction > 0 and not val and len(train) >= 2:
        val.append(train.pop())
    return train, val


def load_sft_data(
    train_specs: Sequence[str],
    tokenizer: Tokenizer,
    config: SFTDataConfig,
    max_tokens: int,
    *,
    val_specs: Sequence[str] = (),
    annotate: Annotate | None = None,
) -> SFTData:
    """Read, split and tokenise fine-tuning data for a model's tokenizer and chat template;
    examples hold at most max_tokens tokens (the context + 1); `annotate` sees each kept one."""
    if not train_specs:
        raise InputError("no fine-tuning data given", hint="name .jsonl/.json/.csv/.parquet files")
    for spec in (*train_specs, *val_specs):
        describe_row_source(spec)  # fail early on a missing path or an unknown type
    bad = BadRecordLog(policy=config.on_bad_record)
    book = Accounting(bad, lambda n: None)
    formats: Counter = Counter()
    opts = config.source_options()
    train_examples = list(read_examples(train_specs, opts, book, formats))
    if val_specs:
        val_examples = list(read_examples(val_specs, opts, book, formats))
        validation = {"files": list(val_specs)}
    else:
        train_examples, val_examples = split_examples(
            train_examples, config.val_fraction, config.split_seed
        )
        validation = {"fraction": config.val_fraction, "seed": config.split_seed}
    stats: Counter = Counter()
    too_long: list[str] = []
    train_notes: list[Any] = []
    val_notes: list[Any] = []
    train = _encode(train_examples, tokenizer, config, max_tokens, book, stats, too_long,
                    annotate, train_notes)  # fmt: skip
    val = _encode(val_examples, tokenizer, config, max_tokens, book, stats, too_long,
                  annotate, val_notes)  # fmt: skip
    if book.open_files:  # a reader or this loop lost track of a record: a bug, not bad input
        raise RuntimeError(f"{book.open_files} input files were never settled")
    accounting = book.summary()
    if not train:
        dropped = accounting["records"]["dropped"]
        reasons = ", ".join(f"{k}: {n}" for k, n in Counter(dropped).most_common()) or "none"
        raise InputError(
            f"no fine-tuning examples left: {accounting['records']['in']} records read, "
            f"dropped: {reasons}",
            path=", ".join(train_specs),
            hint="check the data (and --on-bad-record, the context length or too_long)",
        )
    report = {
        "records": accounting["records"],
        "files": accounting["files"],
        "formats": dict(formats),
        "bad_records": {"total": bad.total, "counts": dict(bad.counts), "examples": bad.examples},
        "too_long": {
            "policy": config.too_long,
            "max_tokens": max_tokens,
            "dropped": stats[TOO_LONG],
            "truncated": stats["truncated"],
            "examples": too_long,
        },
        "validation": validation,
        "examples": {"train": len(train), "val": len(val)},
        "tokens": {
            "train": sum(len(t.ids) for t in train),
            "train_targets": sum(target_count(t) for t in train),
            "val": sum(len(t.ids) for t in val),
            "val_targets": sum(target_count(t) for t in val),
        },
        "prompt_mismatched_turns": stats["prompt_mismatched_turns"],
    }
    if not val:
        _log.warning("no validation examples: add data, raise val_fraction or give a val file")
    return SFTData(train, val, report, train_notes, val_notes)


def _encode(
    examples: Sequence[SFTExample],
    tokenizer: Tokenizer,
    config: SFTDataConfig,
    max_tokens: int,
    book: Accounting,
    stats: Counter,
    too_long: list[str],
    annotate: Annotate | None = None,
    notes: list[Any] | None = None,
) -> list[SFTTokens]:
    """Token ids and masks of the examples; each one's outcome settled in its file's ledger
    (the first examples over the context named in `too_long`; annotate's results in notes)."""
    out = []
    variables = config.template_variables or None
    for example in examples:
        span = example.row.span_bytes
        try:
            tokens = sft_tokens(tokenizer, example.messages, variables=variables, stats=stats)
        except (InputError, RecordProblem) as exc:
            kind = exc.kind if isinstance(exc, RecordProblem) else "template_refused"
            book.bad_log.handle(example.row.error(exc.reason), kind)
            book.settle(example.file_id, BAD_PREFIX + kind, span)
            continue
        fitted = fit_length(tokens, max_tokens, config.too_long)
        if fitted is None or fitted is not tokens:
            what = "dropped" if fitted is None else "truncated"
            stats[TOO_LONG if fitted is None else "truncated"] += 1
            where = example.row.error(
                f"{len(tokens.ids):,} tokens, over the {max_tokens:,} the context holds: {what}"
            )
            if len(too_long) < _MAX_EXAMPLES:
                too_long.append(str(where).splitlines()[0])
                _log.warning("%s", too_long[-1])
        if fitted is None:
            book.settle(example.file_id, TOO_LONG, span)
            continue
        book.settle(example.file_id, KEPT, span)
        out.append(fitted)
        if annotate is not None and notes is not None:
            notes.append(annotate(example, fitted))
    return out
