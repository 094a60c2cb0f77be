"""Per-format readers: each yields Documents and reports bad records with file, line and byte offset."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from pocketlm.common.errors import InputError
from pocketlm.data.normalize import html_to_text
from pocketlm.data.records import BadRecordLog, Document
from pocketlm.data.source_options import SourceOptions

OnBytes = Callable[[int], None]


def _decode_error(
    path: Path, data: bytes, exc: UnicodeDecodeError, base_offset: int = 0, base_line: int = 1
) -> InputError:
    line = base_line + data.count(b"\n", 0, exc.start)
    return InputError(
        f"not valid UTF-8 ({exc.reason}, byte 0x{data[exc.start]:02x})",
        path=path,
        line=line,
        byte_offset=base_offset + exc.start,
        hint="convert the file to UTF-8 (e.g. iconv -f latin1 -t utf-8), or pass --on-bad-record skip",
    )


def _iter_lines(path: Path, on_bytes: OnBytes) -> Iterator[tuple[int, int, bytes]]:
    """(line number from 1, byte offset, raw line with its newline) for a file read in binary."""
    offset = 0
    with path.open("rb") as fh:
        for line_no, raw in enumerate(fh, start=1):
            yield line_no, offset, raw
            offset += len(raw)
            on_bytes(len(raw))


def read_text_file(
    path: Path,
    source: str,
    opts: SourceOptions,
    bad: BadRecordLog,
    on_bytes: OnBytes,
    *,
    is_html: bool = False,
) -> Iterator[Document]:
    """txt / md / rst / code / html: one doc per file (big files cut at lines), paragraph or line."""
    size = path.stat().st_size
    unit = "file" if is_html else opts.text_unit
    if unit == "file" and size <= opts.max_doc_bytes:
        data = path.read_bytes()
        on_bytes(len(data))
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            bad.handle(_decode_error(path, data, exc), "invalid_utf8")
            return
        yield Document(html_to_text(text) if is_html else text, source, f"{path}")
        return
    # Streamed: group lines into documents without holding the file in memory.
    chunk: list[str] = []
    chunk_bytes = 0
    start_line = 1
    for line_no, offset, raw in _iter_lines(path, on_bytes):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            bad.handle(
                _decode_error(path, raw, exc, base_offset=offset, base_line=line_no), "invalid_utf8"
            )
            continue
        if unit == "line":
            if line.strip():
                yield Document(line.rstrip("\n"), source, f"{path}:{line_no}")
            continue
        boundary = (unit == "paragraph" and not line.strip()) or (
            unit == "file" and chunk_bytes + len(raw) > opts.max_doc_bytes
        )
        if boundary and chunk:
            yield Document("".join(chunk), source, f"{path}:{start_line}")
            chunk, chunk_bytes = [], 0
        if not chunk:
            start_line = line_no
        if unit == "paragraph" and not line.strip():
            continue
        chunk.append(line)
        chunk_bytes += len(raw)
    if chunk:
        yield Document("".join(chunk), source, f"{path}:{start_line}")


def _get_field(record: object, dotted: str) -> object:
    node = record
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(part)
        node = node[part]
    return node


def read_jsonl(
    path: Path, source: str, opts: SourceOptions, bad: BadRecordLog, on_bytes: OnBytes
) -> Iterator[Document]:
    """One JSON object per line; the text is in opts.text_field."""
    for line_no, offset, raw in _iter_lines(path, on_bytes):
        if not raw.strip():
            continue
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            bad.handle(
                _decode_error(path, raw, exc, base_offset=offset, base_line=line_no), "invalid_utf8"
            )
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            truncated = not raw.endswith(b"\n") or exc.msg.startswith(("Unterminated", "Expecting"))
            what = "truncated JSON line" if truncated else "invalid JSON"
            bad.handle(
                InputError(
                    f"{what} ({exc.msg} at column {exc.colno})",
                    path=path,
                    line=line_no,
                    byte_offset=offset + exc.pos,
                ),
                "invalid_json",
            )
            continue
        try:
            text = _get_field(record, opts.text_field)
        except KeyError:
            keys = ", ".join(sorted(record)) if isinstance(record, dict) else type(record).__name__
            bad.handle(
                InputError(
                    f"missing field '{opts.text_field}' (the record has: {keys})",
                    path=path,
                    line=line_no,
                    byte_offset=offset,
                    hint="choose the field with --text-field NAME, or pass --on-bad-record skip",
                ),
                "missing_field",
            )
            continue
        if not isinstance(text, str):
            bad.handle(
                InputError(
                    f"field '{opts.text_field}' is {type(text).__name__}, not a string",
                    path=path,
                    line=line_no,
                    byte_offset=offset,
                ),
                "wrong_type",
            )
            continue
        yield Document(text, source, f"{path}:{line_no}")


class _DecodedLines:
    """Feeds csv.reader decoded lines while remembering line number and byte offset for errors."""

    def __init__(self, path: Path, bad: BadRecordLog, on_bytes: OnBytes) -> None:
        self.path, self.bad, self.on_bytes = path, bad, on_bytes
        self.line_no = 0
        self.offset = 0

    def __iter__(self) -> Iterator[str]:
        for line_no, offset, raw in _iter_lines(self.path, self.on_bytes):
            self.line_no, self.offset = line_no, offset
            try:
                yield raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                self.bad.handle(
                    _decode_error(self.path, raw, exc, base_offset=offset, base_line=line_no),
                    "invalid_utf8",
                )
                yield "\n"


def read_csv(
    path: Path, source: str, opts: SourceOptions, bad: BadRecordLog, on_bytes: OnBytes
) -> Iterator[Document]:
    """CSV / TSV with a header row; the text is in opts.csv_column."""
    lines = _DecodedLines(path, bad, on_bytes)
    reader = csv.reader(iter(lines), delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
    try:
        header = next(reader)
    except StopIteration:
        return
    if opts.csv_column not in header:
        raise InputError(
            f"no column '{opts.csv_column}' (columns: {', '.join(header)})",
            path=path,
            line=1,
            byte_offset=0,
            hint="choose the column with --csv-column NAME",
        )
    col = header.index(opts.csv_column)
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            bad.handle(
                InputError(
                    f"malformed CSV ({exc})",
                    path=path,
                    line=lines.line_no,
                    byte_offset=lines.offset,
                ),
                "invalid_csv",
            )
            continue
        if not row:
            continue
        if col >= len(row):
            bad.handle(
                InputError(
                    f"row has {len(row)} fields, column '{opts.csv_column}' is field {col + 1}",
                    path=path,
                    line=lines.line_no,
                    byte_offset=lines.offset,
                ),
                "missing_field",
            )
            continue
        yield Document(row[col], source, f"{path}:{lines.line_no}")


def read_parquet(
    path: Path, source: str, opts: SourceOptions, bad: BadRecordLog, on_bytes: OnBytes
) -> Iterator[Document]:
    """Parquet files, streamed by record batch; the text is in column opts.text_field."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise InputError(f"cannot read as Parquet ({exc})", path=path) from exc
    columns = pf.schema_arrow.names
    if opts.text_field not in columns:
        raise InputError(
            f"no column '{opts.text_field}' (columns: {', '.join(columns)})",
            path=path,
            hint="choose the column with --text-field NAME",
        )
    total = path.stat().st_size
    row = 0
    done_bytes = 0
    for group in range(pf.num_row_groups):
        table = pf.read_row_group(group, columns=[opts.text_field])
        for value in table.column(0).to_pylist():
            row += 1
            if value is None:
                bad.handle(
                    InputError(f"row {row}: '{opts.text_field}' is null", path=path),
                    "missing_field",
                )
                continue
            if not isinstance(value, str):
                bad.handle(
                    InputError(
                        f"row {row}: '{opts.text_field}' is {type(value).__name__}, not a string",
                        path=path,
                    ),
                    "wrong_type",
                )
                continue
            yield Document(value, source, f"{path}#row={row}")
        share = total * (group + 1) // pf.num_row_groups - done_bytes
        done_bytes += share
        on_bytes(share)


def read_records(
    rows: Iterable[dict],
    label: str,
    source: str,
    opts: SourceOptions,
    bad: BadRecordLog,
    on_bytes: OnBytes,
) -> Iterator[Document]:
    """Rows of an HF dataset (dicts): the text is in opts.text_field."""
    for i, record in enumerate(rows, start=1):
        try:
            text = _get_field(record, opts.text_field)
        except KeyError:
            raise InputError(
                f"row {i}: missing field '{opts.text_field}' (fields: {', '.join(sorted(record))})",
                path=label,
                hint="choose the field with --text-field NAME",
            ) from None
        if not isinstance(text, str):
            bad.handle(
                InputError(
                    f"row {i}: '{opts.text_field}' is {type(text).__name__}, not a string",
                    path=label,
                ),
                "wrong_type",
            )
            continue
        on_bytes(len(text.encode("utf-8")))
        yield Document(text, source, f"{label}#row={i}")


def sniff_binary(path: Path) -> bool:
    """True for files that look binary (a NUL byte in the first 8 KiB)."""
    with path.open("rb") as fh:
        return b"\x00" in fh.read(8192)
