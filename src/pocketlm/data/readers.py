"""Per-format readers: each yields Documents and tells the file's ledger about every record and byte.

Bad records are located by file, line and byte offset; a line over sources.max_record_bytes is
dropped unread (too_long_raw). CSV lives in csv_reader.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from pocketlm.common.errors import InputError
from pocketlm.data.accounting import TOO_LONG_RAW, FileLedger
from pocketlm.data.lines import Line, iter_lines
from pocketlm.data.normalize import html_to_text
from pocketlm.data.records import Document
from pocketlm.data.source_options import SourceOptions


def decode_error(
    path: Path, data: bytes, exc: UnicodeDecodeError, base_offset: int = 0, base_line: int = 1
) -> InputError:
    """The InputError for bytes that are not UTF-8, located by line and byte offset in the file."""
    line = base_line + data.count(b"\n", 0, exc.start)
    return InputError(
        f"not valid UTF-8 ({exc.reason}, byte 0x{data[exc.start]:02x})",
        path=path,
        line=line,
        byte_offset=base_offset + exc.start,
        hint="convert the file to UTF-8 (e.g. iconv -f latin1 -t utf-8), or pass --on-bad-record skip",
    )


def read_text_file(
    path: Path, opts: SourceOptions, ledger: FileLedger, *, is_html: bool = False
) -> Iterator[Document]:
    """txt / md / rst / code / html: one doc per file (big files cut at lines), paragraph or line."""
    size = path.stat().st_size
    limit = opts.record_limit_bytes()
    unit = "file" if is_html else opts.text_unit
    if unit == "file" and size <= min(opts.max_doc_bytes, limit):
        data = path.read_bytes()
        ledger.progress(len(data))
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            ledger.bad(decode_error(path, data, exc), "invalid_utf8", len(data))
            return
        yield ledger.emit(html_to_text(text) if is_html else text, f"{path}", len(data))
        return
    # Streamed: no line over the limit is ever held whole, and no document grows past it.
    with path.open("rb") as fh:
        lines = _decoded_lines(path, iter_lines(fh, limit, ledger.progress), ledger)
        if unit == "line":
            yield from _line_docs(path, lines, ledger, limit)
        elif unit == "paragraph":
            yield from _paragraph_docs(path, lines, ledger, limit)
        else:
            yield from _file_chunks(path, lines, ledger, limit, opts.max_doc_bytes)


def _decoded_lines(
    path: Path, lines: Iterator[Line], ledger: FileLedger
) -> Iterator[tuple[Line, str | None]]:
    """(line, text) with text None for a line over the limit; a line that is not UTF-8 is bad."""
    for line in lines:
        if line.raw is None:
            yield line, None
            continue
        try:
            yield line, line.raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            error = decode_error(path, line.raw, exc, line.offset, line.number)
            ledger.bad(error, "invalid_utf8", line.size_bytes)


def too_long(path: Path, line: Line, what: str, limit_bytes: int) -> InputError:
    """Where and how big a line (or paragraph) over the read limit is, for the report."""
    return InputError(
        f"{what} of {line.size_bytes:,} bytes is over the read limit of {limit_bytes:,} bytes "
        "(sources.max_record_bytes)",
        path=path,
        line=line.number,
        byte_offset=line.offset,
    )


def _line_docs(
    path: Path, lines: Iterator[tuple[Line, str | None]], ledger: FileLedger, limit: int
) -> Iterator[Document]:
    for line, text in lines:
        if text is None:
            ledger.drop(TOO_LONG_RAW, line.size_bytes, too_long(path, line, "line", limit))
        elif text.strip():
            yield ledger.emit(text.rstrip("\n"), f"{path}:{line.number}", line.size_bytes)
        else:
            ledger.framing(line.size_bytes)


def _paragraph_docs(
    path: Path, lines: Iterator[tuple[Line, str | None]], ledger: FileLedger, limit: int
) -> Iterator[Document]:
    chunk: list[str] = []
    start: Line | None = None  # first line of the paragraph
    span = 0  # its bytes so far
    dropping = False  # the paragraph went over the limit: it is counted, not kept
    for line, text in lines:
        blank = text is not None and not text.strip()
        if not blank:
            if start is None:
                start = line
            span += line.size_bytes
            dropping = dropping or text is None or span > limit
            if dropping:
                chunk = []
            else:
                chunk.append(text)  # type: ignore[arg-type]
            continue
        if start is not None:
            yield from _end_paragraph(path, chunk, start, span, dropping, ledger, limit)
        chunk, start, span, dropping = [], None, 0, False
        ledger.framing(line.size_bytes)
    if start is not None:
        yield from _end_paragraph(path, chunk, start, span, dropping, ledger, limit)


def _end_paragraph(
    path: Path,
    chunk: list[str],
    start: Line,
    span: int,
    dropped: bool,
    ledger: FileLedger,
    limit: int,
) -> Iterator[Document]:
    if dropped:
        where = Line(start.number, start.offset, span, None)
        ledger.drop(TOO_LONG_RAW, span, too_long(path, where, "paragraph", limit))
    else:
        yield ledger.emit("".join(chunk), f"{path}:{start.number}", span)


def _file_chunks(
    path: Path,
    lines: Iterator[tuple[Line, str | None]],
    ledger: FileLedger,
    limit: int,
    max_doc_bytes: int,
) -> Iterator[Document]:
    """A big file as documents of up to max_doc_bytes cut at lines; a line over the limit is dropped."""
    chunk: list[str] = []
    start = 0
    span = 0
    for line, text in lines:
        if chunk and (text is None or span + line.size_bytes > max_doc_bytes):
            yield ledger.emit("".join(chunk), f"{path}:{start}", span)
            chunk, span = [], 0
        if text is None:
            ledger.drop(TOO_LONG_RAW, line.size_bytes, too_long(path, line, "line", limit))
            continue
        if not chunk:
            start = line.number
        chunk.append(text)
        span += line.size_bytes
    if chunk:
        yield ledger.emit("".join(chunk), f"{path}:{start}", span)


def _get_field(record: object, dotted: str) -> object:
    node = record
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(part)
        node = node[part]
    return node


def read_jsonl(path: Path, opts: SourceOptions, ledger: FileLedger) -> Iterator[Document]:
    """One JSON object per line; the text is in opts.text_field."""
    limit = opts.record_limit_bytes()
    with path.open("rb") as fh:
        for line in iter_lines(fh, limit, ledger.progress):
            if line.raw is None:
                ledger.drop(TOO_LONG_RAW, line.size_bytes, too_long(path, line, "line", limit))
                continue
            record = _json_record(path, line, opts, ledger)
            if record is not None:
                yield ledger.emit(record, f"{path}:{line.number}", line.size_bytes)


NOT_A_RECORD = object()  # parse_json_line: a blank line or a bad record (already counted)


def parse_json_line(path: Path, line: Line, ledger: FileLedger) -> object:
    """The JSON value of one line, or NOT_A_RECORD after counting a blank line (framing) or a bad
    line (invalid UTF-8 or JSON, located by line and byte offset)."""
    raw, size = line.raw or b"", line.size_bytes
    if not raw.strip():
        ledger.framing(size)
        return NOT_A_RECORD
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        ledger.bad(decode_error(path, raw, exc, line.offset, line.number), "invalid_utf8", size)
        return NOT_A_RECORD
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        truncated = not raw.endswith(b"\n") or exc.msg.startswith(("Unterminated", "Expecting"))
        what = "truncated JSON line" if truncated else "invalid JSON"
        error = InputError(
            f"{what} ({exc.msg} at column {exc.colno})",
            path=path,
            line=line.number,
            byte_offset=line.offset + len(text[: exc.pos].encode("utf-8")),
        )
        ledger.bad(error, "invalid_json", size)
        return NOT_A_RECORD


def _json_record(path: Path, line: Line, opts: SourceOptions, ledger: FileLedger) -> str | None:
    """The text of one JSONL line, or None for a blank line (framing) or a bad record (counted)."""
    record = parse_json_line(path, line, ledger)
    if record is NOT_A_RECORD:
        return None
    size = line.size_bytes
    try:
        value = _get_field(record, opts.text_field)
    except KeyError:
        keys = ", ".join(sorted(record)) if isinstance(record, dict) else type(record).__name__
        error = InputError(
            f"missing field '{opts.text_field}' (the record has: {keys})",
            path=path,
            line=line.number,
            byte_offset=line.offset,
            hint="choose the field with --text-field NAME, or pass --on-bad-record skip",
        )
        ledger.bad(error, "missing_field", size)
        return None
    if not isinstance(value, str):
        error = InputError(
            f"field '{opts.text_field}' is {type(value).__name__}, not a string",
            path=path,
            line=line.number,
            byte_offset=line.offset,
        )
        ledger.bad(error, "wrong_type", size)
        return None
    return value


def read_parquet(path: Path, opts: SourceOptions, ledger: FileLedger) -> Iterator[Document]:
    """Parquet files, streamed by row group; the text is in column opts.text_field.

    A row's bytes are its text's UTF-8 bytes (the file itself is compressed).
    """
    import pyarrow.parquet as pq

    total = path.stat().st_size
    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for corrupt files
        ledger.progress(total)
        ledger.unreadable(InputError(f"cannot read as Parquet ({exc})", path=path), total)
        return
    columns = pf.schema_arrow.names
    if opts.text_field not in columns:
        ledger.progress(total)
        error = InputError(
            f"no column '{opts.text_field}' (columns: {', '.join(columns)})",
            path=path,
            hint="choose the column with --text-field NAME",
        )
        ledger.unreadable(error, total)
        return
    row = 0
    done_bytes = 0
    for group in range(pf.num_row_groups):
        share = total * (group + 1) // pf.num_row_groups - done_bytes
        done_bytes += share
        try:
            values = pf.read_row_group(group, columns=[opts.text_field]).column(0).to_pylist()
        except Exception as exc:  # a corrupt row group: count it, read the others
            ledger.progress(share)
            error = InputError(f"row group {group}: cannot read ({exc})", path=path)
            ledger.bad(error, "invalid_parquet", 0)
            continue
        for value in values:
            row += 1
            if value is None:
                error = InputError(f"row {row}: '{opts.text_field}' is null", path=path)
                ledger.bad(error, "missing_field", 0)
            elif not isinstance(value, str):
                kind = type(value).__name__
                error = InputError(
                    f"row {row}: '{opts.text_field}' is {kind}, not a string", path=path
                )
                ledger.bad(error, "wrong_type", 0)
            else:
                yield ledger.emit(value, f"{path}#row={row}", len(value.encode("utf-8")))
        ledger.progress(share)


def read_records(
    rows: Iterable[dict], label: str, opts: SourceOptions, ledger: FileLedger
) -> Iterator[Document]:
    """Rows of an HF dataset (dicts): the text is in opts.text_field; a row's bytes are its text's."""
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
            error = InputError(
                f"row {i}: '{opts.text_field}' is {type(text).__name__}, not a string", path=label
            )
            ledger.bad(error, "wrong_type", 0)
            continue
        n_bytes = len(text.encode("utf-8"))
        ledger.progress(n_bytes)
        yield ledger.emit(text, f"{label}#row={i}", n_bytes)


def sniff_binary(path: Path) -> bool:
    """True for files that look binary (a NUL byte in the first 8 KiB)."""
    with path.open("rb") as fh:
        return b"\x00" in fh.read(8192)
