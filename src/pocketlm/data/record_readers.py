"""Structured records (field -> value) from jsonl, json, csv / tsv, parquet and `datasets` folders.

Fine-tuning data is records, not text: each Row carries its fields, where it is (file:line, or
name#row=N where a file has no lines) and its file's ledger (accounting.py), so the caller
settles it (emit, or count it bad) under the same bad-record policy as `data build`. Broken
lines and malformed CSV records are counted here, located by file, line and byte offset; a
.json file holds an array of records or one record per line (what `Dataset.to_json` writes).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pocketlm.common.errors import InputError
from pocketlm.common.manifest import MANIFEST_NAME
from pocketlm.data.accounting import TOO_LONG_RAW, Accounting, FileLedger
from pocketlm.data.csv_reader import read_csv_rows
from pocketlm.data.lines import iter_lines
from pocketlm.data.readers import NOT_A_RECORD, decode_error, parse_json_line, too_long
from pocketlm.data.source_options import SourceOptions
from pocketlm.data.sources import hf_rows, is_hf_dataset_dir, walk_files

_MAX_MANIFEST_BYTES = 16 << 20  # a bigger manifest.json is someone's data, read as records
ROW_SUFFIXES = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".tsv": "csv",
    ".parquet": "parquet",
}


@dataclass(frozen=True)
class Row:
    """One record as read: its fields, where it is, and the ledger that settles it."""

    fields: object  # a dict for a well-formed record; anything JSON for a JSON line
    origin: str  # "file:line" or "name#row=N"
    path: str
    line: int | None  # the line the record starts on, where the file has lines
    byte_offset: int | None
    span_bytes: int  # bytes it takes in its file (0 where that is unknown: parquet, datasets)
    ledger: FileLedger

    def error(self, reason: str, hint: str | None = None) -> InputError:
        """An InputError located at this row."""
        where = self.path if self.line is not None else self.origin
        return InputError(
            reason, path=where, line=self.line, byte_offset=self.byte_offset, hint=hint
        )


def describe_row_source(spec: str) -> str:
    """Check a data argument early; its kind: 'hf' (a datasets folder or hf:NAME), 'dir', 'file'."""
    if spec.startswith("hf:"):
        return "hf"
    path = Path(spec)
    if not path.exists():
        raise InputError(
            "no such file or folder",
            path=spec,
            hint="fine-tuning data is .jsonl, .json, .csv, .tsv or .parquet files, folders of "
            "them, or a folder written by datasets' save_to_disk",
        )
    if is_hf_dataset_dir(path):
        return "hf"
    if path.is_dir():
        return "dir"
    if path.suffix.lower() not in ROW_SUFFIXES:
        raise InputError(
            f"unsupported file type {path.suffix or '(none)'}",
            path=spec,
            hint=f"fine-tuning data files end in {', '.join(sorted(ROW_SUFFIXES))}",
        )
    return "file"


def iter_rows(spec: str, opts: SourceOptions, book: Accounting) -> Iterator[Row]:
    """Every record of one data argument, in a deterministic order; every file gets a ledger."""
    kind = describe_row_source(spec)
    if kind == "hf":
        yield from _dataset_rows(spec, spec, opts, book)
    elif kind == "file":
        yield from _file_rows(Path(spec), spec, opts, book)
    else:
        root = Path(spec)
        datasets_read: set[Path] = set()
        for path in walk_files(root, opts.include_hidden):
            dataset = _dataset_folder(root, path)
            if dataset is not None:  # a save_to_disk folder inside: its rows, once
                if dataset not in datasets_read:
                    datasets_read.add(dataset)
                    yield from _dataset_rows(str(dataset), spec, opts, book)
            elif is_artifact_manifest(path):  # a PocketLM output (synth) given as a folder
                book.skip_file(path, spec, path.stat().st_size, "a PocketLM artifact's manifest")
            elif path.suffix.lower() in ROW_SUFFIXES:
                yield from _file_rows(path, spec, opts, book)
            else:
                book.skip_file(path, spec, path.stat().st_size, f"unsupported type {path.suffix}")


def is_artifact_manifest(path: Path) -> bool:
    """True for the manifest.json of a PocketLM artifact (its description, not records)."""
    if path.name != MANIFEST_NAME:
        return False
    try:
        if path.stat().st_size > _MAX_MANIFEST_BYTES:
            return False
        data = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(data, dict) and "kind" in data and "pocketlm_version" in data


def _dataset_folder(root: Path, path: Path) -> Path | None:
    """The outermost `datasets` save_to_disk folder under root holding path, if any."""
    for parent in reversed(path.relative_to(root).parents[:-1]):
        if is_hf_dataset_dir(root / parent):
            return root / parent
    return None


def _dataset_rows(spec: str, source: str, opts: SourceOptions, book: Accounting) -> Iterator[Row]:
    name, rows = hf_rows(spec, opts.hf_split)
    ledger = book.open(name, source)
    for i, fields in enumerate(rows, start=1):
        yield Row(fields, f"{name}#row={i}", name, None, None, 0, ledger)
    book.done_reading(ledger)


def _file_rows(path: Path, source: str, opts: SourceOptions, book: Accounting) -> Iterator[Row]:
    ledger = book.open(path, source)
    kind = ROW_SUFFIXES[path.suffix.lower()]
    try:
        if kind == "jsonl":
            yield from _jsonl_rows(path, opts, ledger)
        elif kind == "json":
            yield from _json_rows(path, opts, ledger)
        elif kind == "csv":
            for first, fields, size in read_csv_rows(path, opts, ledger):
                origin = f"{path}:{first.number}"
                yield Row(fields, origin, str(path), first.number, first.offset, size, ledger)
        else:
            yield from _parquet_rows(path, ledger)
    except OSError as exc:  # permission denied, a file that vanished, an I/O error mid-read
        error = InputError(f"cannot read the file ({exc.strerror or exc})", path=path)
        ledger.unreadable(error, path.stat().st_size if path.exists() else 0)
    book.done_reading(ledger)


def _jsonl_rows(path: Path, opts: SourceOptions, ledger: FileLedger) -> Iterator[Row]:
    limit = opts.record_limit_bytes()
    with path.open("rb") as fh:
        for line in iter_lines(fh, limit, ledger.progress):
            if line.raw is None:
                ledger.drop(TOO_LONG_RAW, line.size_bytes, too_long(path, line, "line", limit))
                continue
            value = parse_json_line(path, line, ledger)
            if value is not NOT_A_RECORD:
                origin = f"{path}:{line.number}"
                yield Row(
                    value, origin, str(path), line.number, line.offset, line.size_bytes, ledger
                )


def _json_rows(path: Path, opts: SourceOptions, ledger: FileLedger) -> Iterator[Row]:
    """A JSON array of records (read whole), or else JSON lines."""
    with path.open("rb") as fh:
        head = fh.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    if not head.startswith(b"["):
        yield from _jsonl_rows(path, opts, ledger)
        return
    data = path.read_bytes()
    ledger.progress(len(data))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        ledger.unreadable(decode_error(path, data, exc), len(data))
        return
    decoder = json.JSONDecoder()
    where = _Positions(text)
    pos = _skip_space(text, text.index("[") + 1)
    used_bytes = 0
    if text.startswith("]", pos):
        pos = len(text)
    while pos < len(text):
        start = pos
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            _bad_json_tail(path, exc.pos, exc.msg, where, ledger, len(data) - used_bytes)
            return
        size = len(text[start:end].encode("utf-8"))
        used_bytes += size
        line, offset = where.at(start)
        yield Row(value, f"{path}:{line}", str(path), line, offset, size, ledger)
        pos = _skip_space(text, end)
        if text.startswith(",", pos):
            pos = _skip_space(text, pos + 1)
        elif text.startswith("]", pos) and not text[pos + 1 :].strip():
            break
        else:
            reason = "expected ',' or ']' after a record"
            _bad_json_tail(path, pos, reason, where, ledger, len(data) - used_bytes)
            return
    ledger.framing(len(data) - used_bytes)


def _bad_json_tail(
    path: Path, pos: int, reason: str, where: _Positions, ledger: FileLedger, rest_bytes: int
) -> None:
    """The rest of a JSON array after a syntax error cannot be cut into records: one bad record."""
    line, offset = where.at(pos)
    error = InputError(
        f"invalid JSON in the array ({reason})", path=path, line=line, byte_offset=offset
    )
    ledger.bad(error, "invalid_json", rest_bytes)


class _Positions:
    """(line, byte offset) of increasing character positions in a text, each counted once."""

    def __init__(self, text: str) -> None:
        self.text, self.pos, self.line, self.offset = text, 0, 1, 0

    def at(self, pos: int) -> tuple[int, int]:
        if pos < self.pos:  # before the last position asked: count from the start
            self.pos, self.line, self.offset = 0, 1, 0
        piece = self.text[self.pos : pos]
        self.line += piece.count("\n")
        self.offset += len(piece.encode("utf-8"))
        self.pos = pos
        return self.line, self.offset


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _parquet_rows(path: Path, ledger: FileLedger) -> Iterator[Row]:
    """Parquet rows as dicts (nested columns as lists and dicts), read one row group at a time."""
    import pyarrow.parquet as pq

    total = path.stat().st_size
    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for corrupt files
        ledger.progress(total)
        ledger.unreadable(InputError(f"cannot read as Parquet ({exc})", path=path), total)
        return
    row = 0
    for group in range(pf.num_row_groups):
        try:
            records = pf.read_row_group(group).to_pylist()
        except Exception as exc:  # a corrupt row group: count it, read the others
            error = InputError(f"row group {group}: cannot read ({exc})", path=path)
            ledger.bad(error, "invalid_parquet", 0)
            continue
        for fields in records:
            row += 1
            yield Row(fields, f"{path}#row={row}", str(path), None, None, 0, ledger)
    ledger.progress(total)
    ledger.framing(total)  # compressed: the bytes belong to no one record
