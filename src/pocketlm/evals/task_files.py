"""Evaluation tasks from local files: JSONL or CSV records, one task a file, checked as read.

Three kinds of item, told apart by their fields (or named by the caller):

- "choice": `question`, `choices` (a list; in CSV a JSON array) and `answer` (the index of the
  right choice, or its text): scored by the log-likelihood of each choice after the question.
- "generate": `prompt` (or `question` without `choices`), `answer` (a string or a list of
  acceptable strings), optional `stop` (a string or a list) and `regex` (a pattern the output
  must contain): scored on the greedy output.
- "classify": `text` and `label`: a classifier's predicted label, or for a language model the
  label word it finds most likely (scored as a choice among the task's labels).

Every problem raises InputError naming the file and line (and the field).
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pocketlm.common.errors import InputError

TaskKind = Literal["choice", "generate", "classify"]
KINDS: tuple[str, ...] = ("choice", "generate", "classify")
SUFFIXES = (".jsonl", ".ndjson", ".csv", ".tsv")


@dataclass(frozen=True)
class ChoiceItem:
    """A multiple-choice question: the context, its choices and the index of the right one."""

    context: str
    choices: tuple[str, ...]
    gold: int
    where: str  # "file:line"


@dataclass(frozen=True)
class GenerateItem:
    """A prompt, the acceptable answers, the stop strings and an optional pattern."""

    prompt: str
    answers: tuple[str, ...]
    stop: tuple[str, ...]
    regex: str | None
    where: str


@dataclass(frozen=True)
class ClassifyItem:
    """A text and its label."""

    text: str
    label: str
    where: str


Item = ChoiceItem | GenerateItem | ClassifyItem


@dataclass(frozen=True)
class Task:
    """One task file: its name (the file's stem), kind and items in file order; a classify task's
    labels in order of first appearance."""

    name: str
    path: str
    kind: TaskKind
    items: tuple[Item, ...]
    labels: tuple[str, ...] = ()


def read_task(path: str | Path, kind: str = "auto") -> Task:
    """The task in a .jsonl/.csv/.tsv file; kind "auto" infers it from the first record's fields."""
    if kind != "auto" and kind not in KINDS:
        raise InputError(f"unknown task type {kind!r}: use auto, {', '.join(KINDS)}")
    p = Path(path)
    if not p.is_file():
        raise InputError("no such task file", path=p, hint="give a .jsonl or .csv file")
    if p.suffix.lower() not in SUFFIXES:
        raise InputError(
            f"unsupported task file type {p.suffix or '(none)'}",
            path=p,
            hint=f"task files end in {', '.join(SUFFIXES)}",
        )
    items: list[Item] = []
    resolved: str | None = None if kind == "auto" else kind
    for line, record in _records(p):
        if resolved is None:
            resolved = infer_kind(record, p, line)
        items.append(parse_item(record, resolved, p, line))
    if not items:
        raise InputError("the task file holds no records", path=p)
    assert resolved is not None
    labels: tuple[str, ...] = ()
    if resolved == "classify":
        labels = tuple(dict.fromkeys(i.label for i in items))  # type: ignore[union-attr]
        if len(labels) < 2:
            raise InputError(
                f"a classify task needs at least two labels, found {list(labels)}", path=p
            )
    return Task(p.stem, str(p), resolved, tuple(items), labels)  # type: ignore[arg-type]


def infer_kind(record: dict[str, Any], path: Path, line: int) -> str:
    """The kind of item a record's fields describe."""
    if "choices" in record:
        return "choice"
    if "prompt" in record or ("question" in record and "answer" in record):
        return "generate"
    if "text" in record and "label" in record:
        return "classify"
    raise InputError(
        f"cannot tell the task type from the fields {sorted(record)}",
        path=path,
        line=line,
        hint="multiple choice: question/choices/answer; generation: prompt/answer[/stop]; "
        "classification: text/label",
    )


def parse_item(record: dict[str, Any], kind: str, path: Path, line: int) -> Item:
    """One record as an item of `kind`; InputError naming the file, line and field."""
    where = f"{path}:{line}"

    def fail(reason: str, hint: str | None = None) -> InputError:
        return InputError(reason, path=path, line=line, hint=hint)

    if kind == "choice":
        context = _text(record, "question", fail)
        choices = _string_list(record, "choices", fail, min_items=2)
        return ChoiceItem(context, choices, _gold(record, choices, fail), where)
    if kind == "generate":
        field = "prompt" if "prompt" in record else "question"
        prompt = _text(record, field, fail)
        answers = _string_list(record, "answer", fail, min_items=1, allow_empty=True)
        stop = _string_list(record, "stop", fail, min_items=0) if "stop" in record else ()
        if any(not s for s in stop):
            raise fail("'stop' strings must not be empty")
        regex = record.get("regex")
        if regex is not None:
            if not isinstance(regex, str):
                raise fail(f"'regex' must be a string, got {type(regex).__name__}")
            try:
                re.compile(regex)
            except re.error as exc:
                raise fail(f"'regex' is not a valid pattern: {exc}") from exc
        return GenerateItem(prompt, answers, stop, regex or None, where)
    text = _text(record, "text", fail)
    label = record.get("label")
    if isinstance(label, bool) or not isinstance(label, str | int) or str(label) == "":
        raise fail(f"'label' must be a non-empty string or an integer, got {label!r}")
    return ClassifyItem(text, str(label), where)


def _records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line, record) of each record; blank JSONL lines are skipped."""
    if path.suffix.lower() in (".csv", ".tsv"):
        yield from _csv_records(path)
        return
    with path.open("r", encoding="utf-8-sig") as fh:
        for number, text in enumerate(fh, start=1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as exc:
                raise InputError(f"not valid JSON ({exc.msg})", path=path, line=number) from exc
            if not isinstance(record, dict):
                raise InputError(
                    f"a record must be a JSON object, got {type(record).__name__}",
                    path=path,
                    line=number,
                )
            yield number, record


def _csv_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """CSV/TSV rows as records; `choices`, `answer` lists and `stop` lists may be JSON arrays."""
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with path.open("r", encoding="utf-8-sig", newline="") as fh:
        reader = csv.DictReader(fh, delimiter=delimiter)
        start = 2  # the header is line 1
        for row in reader:
            if None in row:
                raise InputError("more cells than header columns", path=path, line=start)
            record: dict[str, Any] = {k: v for k, v in row.items() if v is not None}
            for key in ("choices", "answer", "stop"):
                value = record.get(key)
                if isinstance(value, str) and value.startswith("["):
                    try:
                        record[key] = json.loads(value)
                    except json.JSONDecodeError as exc:
                        raise InputError(
                            f"'{key}' looks like a JSON array but is not one ({exc.msg})",
                            path=path,
                            line=start,
                        ) from exc
            if record.get("stop") == "":
                del record["stop"]
            yield start, record
            start = reader.line_num + 1


def _text(record: dict[str, Any], field: str, fail) -> str:
    value = record.get(field)
    if field not in record:
        raise fail(f"'{field}' is missing (fields: {sorted(record)})")
    if not isinstance(value, str) or not value:
        raise fail(f"'{field}' must be a non-empty string, got {value!r}")
    return value


def _string_list(
    record: dict[str, Any], field: str, fail, *, min_items: int, allow_empty: bool = False
) -> tuple[str, ...]:
    if field not in record:
        raise fail(f"'{field}' is missing (fields: {sorted(record)})")
    value = record[field]
    values = [value] if isinstance(value, str | int) and not isinstance(value, bool) else value
    if not isinstance(values, list) or not all(
        isinstance(v, str | int) and not isinstance(v, bool) for v in values
    ):
        raise fail(f"'{field}' must be a string or a list of strings, got {value!r}")
    out = tuple(str(v) for v in values)
    if len(out) < min_items:
        raise fail(f"'{field}' needs at least {min_items} entries, got {len(out)}")
    if not allow_empty and any(not v for v in out):
        raise fail(f"'{field}' entries must not be empty")
    return out


def _gold(record: dict[str, Any], choices: tuple[str, ...], fail) -> int:
    """The index of the right choice: an integer index, or a choice's text (in CSV an integer's
    digits, when no choice has that text)."""
    if "answer" not in record:
        raise fail("'answer' is missing (the index of the right choice, or its text)")
    answer = record["answer"]
    if isinstance(answer, str):
        if answer in choices:
            return choices.index(answer)
        if answer.strip().lstrip("-").isdigit():
            answer = int(answer)
        else:
            raise fail(f"'answer' {answer!r} is none of the choices {list(choices)}")
    if isinstance(answer, bool) or not isinstance(answer, int):
        raise fail(f"'answer' must be an index or a choice's text, got {answer!r}")
    if not 0 <= answer < len(choices):
        raise fail(f"'answer' index {answer} is outside 0..{len(choices) - 1}")
    return answer
