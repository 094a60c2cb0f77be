"""CSV / TSV that never swallows rows: strict quoting, a width check and limits on one record.

Python's csv module, left to itself, lets an unclosed quote run to the end of the file and
return every later row as one field. Here a record is malformed when its quoting is broken
(strict mode: a quote left open at the end of the file, text after a closing quote), when its
number of fields differs from the header's, or when it spans more than
sources.csv_max_record_lines lines or sources.max_record_bytes bytes. A malformed record that
spans one line is skipped; one that spans several lines most likely joined rows through a stray
quote, so only its first line is counted bad and parsing restarts on the next line, which gives
the joined rows back.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pocketlm.common.errors import InputError
from pocketlm.data.accounting import TOO_LONG_RAW, FileLedger
from pocketlm.data.lines import Line, iter_lines
from pocketlm.data.readers import decode_error, too_long
from pocketlm.data.records import Document
from pocketlm.data.source_options import SourceOptions


class _Overrun(Exception):
    """The record being parsed went over a limit; parsing must restart elsewhere."""


@dataclass
class _Record:
    """One parsed (or failed) record and the lines it took."""

    first: Line  # its first line (raw dropped)
    n_lines: int
    size_bytes: int
    fields: list[str] | None  # None: it could not be parsed
    problem: str | None  # why it could not be parsed
    first_over_limit: bool  # its first line alone is over the byte limit
    bad_bytes: tuple[Line, UnicodeDecodeError] | None  # the first line that is not UTF-8

    @property
    def end(self) -> int:
        """Byte offset just after the record."""
        return self.first.offset + self.size_bytes


class _Parser:
    """Parses one record at a time from a byte position; after a failure it restarts anywhere."""

    def __init__(
        self, fh: BinaryIO, delimiter: str, limit_bytes: int, max_lines: int, ledger: FileLedger
    ) -> None:
        self.fh, self.delimiter, self.ledger = fh, delimiter, ledger
        self.limit_bytes, self.max_lines = limit_bytes, max_lines
        self.reported_bytes = 0  # progress already reported (restarts re-read lines)
        self.restart(1, 0)

    def restart(self, line_number: int, offset: int) -> None:
        """Parse on from this line, with a fresh reader."""
        self.fh.seek(offset)
        lines = iter_lines(
            self.fh, self.limit_bytes, lambda n: None, first_line=line_number, offset=offset
        )
        self.reader = csv.reader(self._feed(lines), delimiter=self.delimiter, strict=True)

    def _feed(self, lines: Iterator[Line]) -> Iterator[str]:
        for line in lines:
            if line.end > self.reported_bytes:
                self.ledger.progress(line.end - self.reported_bytes)
                self.reported_bytes = line.end
            if self.n_lines == 0:
                self.first = Line(line.number, line.offset, line.size_bytes, None)
            self.n_lines += 1
            self.size_bytes += line.size_bytes
            if line.raw is None:
                self.first_over_limit = self.n_lines == 1
                raise _Overrun(
                    f"line {line.number} is over the read limit of {self.limit_bytes:,} bytes"
                )
            if self.n_lines > self.max_lines:
                raise _Overrun(
                    f"the record spans more than {self.max_lines:,} lines: an unclosed quote? "
                    "(raise sources.csv_max_record_lines if the field is real)"
                )
            if self.size_bytes > self.limit_bytes:
                raise _Overrun(
                    f"the record is over {self.limit_bytes:,} bytes: an unclosed quote? "
                    "(raise sources.max_record_bytes if the field is real)"
                )
            try:
                yield line.raw.decode("utf-8-sig" if line.number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                self.bad_bytes = self.bad_bytes or (line, exc)
                yield line.raw.decode("utf-8", errors="replace")

    def next_record(self) -> _Record | None:
        """The next record, parsed or failed; None at the end of the file."""
        self.first = Line(0, 0, 0, None)
        self.n_lines = self.size_bytes = 0
        self.first_over_limit = False
        self.bad_bytes: tuple[Line, UnicodeDecodeError] | None = None
        fields: list[str] | None = None
        problem = None
        previous_limit = csv.field_size_limit(self.limit_bytes)  # the record limit bounds a field
        try:
            fields = next(self.reader)
        except StopIteration:
            return None
        except _Overrun as exc:
            problem = str(exc)
        except csv.Error as exc:
            problem = (
                "a quoted field is still open at the end of the file"
                if "unexpected end of data" in str(exc)
                else str(exc)
            )
        finally:
            csv.field_size_limit(previous_limit)
        return _Record(
            self.first,
            self.n_lines,
            self.size_bytes,
            fields,
            problem,
            self.first_over_limit,
            self.bad_bytes,
        )


def read_csv(path: Path, opts: SourceOptions, ledger: FileLedger) -> Iterator[Document]:
    """CSV / TSV with a header row; the text is in opts.csv_column. Malformed records are bad."""
    rows = read_csv_rows(path, opts, ledger, required=(opts.csv_column,))
    for first, row, size_bytes in rows:
        yield ledger.emit(row[opts.csv_column], f"{path}:{first.number}", size_bytes)


def read_csv_rows(
    path: Path, opts: SourceOptions, ledger: FileLedger, *, required: tuple[str, ...] = ()
) -> Iterator[tuple[Line, dict[str, str], int]]:
    """(first line, {column: value}, bytes) of each well-formed record of a CSV / TSV with a
    header row; malformed records are bad, and a header without the `required` columns makes
    the whole file unreadable."""
    limit = opts.record_limit_bytes()
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    total = path.stat().st_size
    with path.open("rb") as fh:
        parser = _Parser(fh, delimiter, limit, opts.csv_max_record_lines, ledger)
        header = parser.next_record()
        if header is None:
            return
        columns = header.fields or []
        missing = [c for c in required if c not in columns]
        if header.fields is None or missing or not columns:
            if header.fields is None:
                reason = f"malformed CSV header ({header.problem})"
            elif missing:
                reason = f"no column '{missing[0]}' (columns: {', '.join(columns)})"
            else:
                reason = "the first line is empty: no header row"
            error = InputError(
                reason,
                path=path,
                line=1,
                byte_offset=0,
                hint="choose the column with --csv-column NAME" if required else None,
            )
            ledger.progress(total - parser.reported_bytes)
            ledger.unreadable(error, total)
            return
        ledger.framing(header.size_bytes)
        while (record := parser.next_record()) is not None:
            fields = _fields_of(path, record, len(columns), ledger, limit)
            if fields is not None:
                yield record.first, dict(zip(columns, fields, strict=True)), record.size_bytes
            elif record.fields is None or record.problem is not None:
                # Failed or malformed: the reader may have stopped mid-record, and joined rows
                # come back when parsing restarts on the record's second line.
                parser.restart(record.first.number + 1, record.first.end)


def _fields_of(
    path: Path, record: _Record, width: int, ledger: FileLedger, limit: int
) -> list[str] | None:
    """The fields of one record, or None after counting it as framing, dropped or bad.

    A malformed record that spans several lines is counted by its first line only: the caller
    parses again from the next line.
    """
    first = record.first
    if record.first_over_limit:
        ledger.drop(TOO_LONG_RAW, first.size_bytes, too_long(path, first, "line", limit))
        return None
    if record.fields == []:  # a blank line
        ledger.framing(record.size_bytes)
        return None
    fields = record.fields or []
    problem = record.problem
    if problem is None and len(fields) != width:
        problem = f"row has {len(fields)} fields, the header has {width}"
        if record.n_lines > 1:
            problem += ": a stray quote joined rows?"
        record.problem = problem
    if problem is not None:
        last = first.number + record.n_lines - 1
        span = f" (lines {first.number}-{last})" if record.n_lines > 1 else ""
        error = InputError(
            f"malformed CSV: {problem}{span}",
            path=path,
            line=first.number,
            byte_offset=first.offset,
        )
        ledger.bad(error, "invalid_csv", first.size_bytes)
        return None
    if record.bad_bytes is not None:
        line, exc = record.bad_bytes
        error = decode_error(path, line.raw or b"", exc, line.offset, line.number)
        ledger.bad(error, "invalid_utf8", record.size_bytes)
        return None
    return fields
