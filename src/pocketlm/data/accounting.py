"""Where every input record and byte of `data build` went: per-file ledgers and corpus totals.

A reader opens a FileLedger per file and reports each record as it reads it: emitted as a
Document, dropped unread (too_long_raw), or bad; bytes that belong to no record (CSV headers,
blank lines) are framing. The build loop then settles each emitted Document: kept, or removed by
a filter or dedup. Once a file is read and all its documents are settled it is closed: its counts
join the totals and, if it lost anything, it is named (dropped_files.jsonl and the report). So
per file and in total: records in = kept + dropped by reason, and
bytes in = kept + dropped by reason + framing (+ whole files skipped unread).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from pocketlm.common.errors import InputError
from pocketlm.common.log import get_logger
from pocketlm.data.lines import OnBytes
from pocketlm.data.records import BadRecordLog, Document

KEPT = "kept"
BAD_PREFIX = "bad:"  # outcome of a bad record: "bad:invalid_json", ...
TOO_LONG_RAW = "too_long_raw"  # a line or record over sources.max_record_bytes, dropped unread
REPORT_FILES = 50  # files named in data_report.md; dropped_files.jsonl names every one
_MAX_EXAMPLES = 20
_log = get_logger("pocketlm.data")


@dataclass
class FileLedger:
    """One input file (or dataset): its records and bytes by outcome, as read and as settled."""

    file_id: int
    path: str
    source: str
    bad_log: BadRecordLog
    book: Accounting
    records: Counter = field(default_factory=Counter)  # outcome -> records
    bytes: Counter = field(default_factory=Counter)  # outcome -> bytes as stored in the file
    framing_bytes: int = 0
    skipped: str | None = None  # why the whole file was skipped unread
    skipped_bytes: int = 0
    pending: int = 0  # documents emitted and not settled yet
    reading: bool = True

    def emit(self, text: str, origin: str, span_bytes: int) -> Document:
        """A Document for the pipeline; its outcome is settled later by Accounting.settle."""
        self.pending += 1
        return Document(text, self.source, origin, span_bytes, self.file_id)

    def framing(self, n_bytes: int) -> None:
        """Bytes that belong to no record: headers, blank lines."""
        self.framing_bytes += n_bytes

    def drop(self, reason: str, n_bytes: int, where: InputError) -> None:
        """A record dropped while reading (it is never decoded); counted, logged, first ones kept."""
        self.records[reason] += 1
        self.bytes[reason] += n_bytes
        self.book.note_drop(f"{str(where).splitlines()[0]} ({reason})")

    def bad(self, error: InputError, kind: str, n_bytes: int) -> None:
        """A bad record: raises under --on-bad-record error, else counted as bad:<kind>."""
        self.bad_log.handle(error, kind)
        self.records[BAD_PREFIX + kind] += 1
        self.bytes[BAD_PREFIX + kind] += n_bytes

    def unreadable(self, error: InputError, n_bytes: int) -> None:
        """The whole file cannot be read (no such column, corrupt): raise, or skip it named."""
        if self.bad_log.policy == "error":
            raise error
        _log.warning("skipped file: %s", str(error).splitlines()[0])
        self.skipped = f"unreadable: {error.reason}"
        self.skipped_bytes = n_bytes

    def progress(self, n_bytes: int) -> None:
        """Bytes read from disk, for the progress bar (not accounting)."""
        self.book.on_bytes(n_bytes)

    @property
    def records_in(self) -> int:
        return sum(self.records.values())

    @property
    def bytes_in(self) -> int:
        return sum(self.bytes.values()) + self.framing_bytes + self.skipped_bytes

    def entry(self) -> dict | None:
        """The file's line in dropped_files.jsonl, or None when it lost nothing."""
        dropped = {k: n for k, n in self.records.items() if k != KEPT}
        base = {"path": self.path, "source": self.source}
        if self.skipped is not None:
            return {**base, "status": "skipped", "reason": self.skipped, "bytes_in": self.bytes_in}
        if self.records[KEPT] and not dropped:
            return None
        if self.records[KEPT]:
            status, reason = "partial", ", ".join(sorted(dropped))
        else:
            status, reason = "dropped", ", ".join(sorted(dropped)) or "empty"
        return {
            **base,
            "status": status,
            "reason": reason,
            "records_in": self.records_in,
            "records_kept": self.records[KEPT],
            "dropped": dict(sorted(dropped.items())),
            "bytes_in": self.bytes_in,
            "bytes_kept": self.bytes[KEPT],
            "bytes_dropped": {k: self.bytes[k] for k in sorted(dropped)},
        }


@dataclass
class SourceTotals:
    """One source argument's files, records and bytes by outcome."""

    files_read: int = 0
    skipped_files: Counter = field(default_factory=Counter)  # reason -> files
    records: Counter = field(default_factory=Counter)
    bytes: Counter = field(default_factory=Counter)
    framing_bytes: int = 0
    skipped_bytes: int = 0


class Accounting:
    """All ledgers of one build: open files, totals per source, files named in file order."""

    def __init__(
        self,
        bad_log: BadRecordLog,
        on_bytes: OnBytes,
        on_named: Callable[[dict], None] = lambda entry: None,
    ) -> None:
        self.bad_log, self.on_bytes, self.on_named = bad_log, on_bytes, on_named
        self.sources: dict[str, SourceTotals] = {}
        self.named_first: list[dict] = []  # the first REPORT_FILES named files, for the report
        self.named_count = 0
        self.drop_examples: list[str] = []
        self._open: dict[int, FileLedger] = {}
        self._closed: dict[int, dict | None] = {}  # closed out of order, waiting to be named
        self._next_id = 0
        self._next_named = 0

    def open(self, path: object, source: str, bad_log: BadRecordLog | None = None) -> FileLedger:
        """Start the ledger of a file about to be read."""
        ledger = FileLedger(self._next_id, str(path), source, bad_log or self.bad_log, self)
        self._open[ledger.file_id] = ledger
        self._next_id += 1
        return ledger

    def skip_file(self, path: object, source: str, n_bytes: int, reason: str) -> None:
        """A whole file skipped unread (unsupported type, binary): named with reason and bytes."""
        ledger = self.open(path, source)
        ledger.skipped, ledger.skipped_bytes = reason, n_bytes
        self.on_bytes(n_bytes)
        self.done_reading(ledger)

    def done_reading(self, ledger: FileLedger) -> None:
        """The reader has finished the file; it closes once its documents are settled."""
        ledger.reading = False
        if ledger.pending == 0:
            self._close(ledger)

    def settle(self, file_id: int, outcome: str, span_bytes: int) -> None:
        """What became of one emitted document: KEPT, or the filter / dedup reason."""
        ledger = self._open[file_id]
        ledger.records[outcome] += 1
        ledger.bytes[outcome] += span_bytes
        ledger.pending -= 1
        if ledger.pending == 0 and not ledger.reading:
            self._close(ledger)

    def note_drop(self, message: str) -> None:
        """Log a record dropped while reading; the first few are kept for the report."""
        _log.warning("dropped unread: %s", message)
        if len(self.drop_examples) < _MAX_EXAMPLES:
            self.drop_examples.append(message)

    @property
    def open_files(self) -> int:
        return len(self._open)

    def _close(self, ledger: FileLedger) -> None:
        del self._open[ledger.file_id]
        totals = self.sources.setdefault(ledger.source, SourceTotals())
        if ledger.skipped is not None:
            totals.skipped_files[ledger.skipped] += 1
            totals.skipped_bytes += ledger.skipped_bytes
        else:
            totals.files_read += 1
        totals.records.update(ledger.records)
        totals.bytes.update(ledger.bytes)
        totals.framing_bytes += ledger.framing_bytes
        # Name files in the order they were opened, whatever order they close in.
        self._closed[ledger.file_id] = ledger.entry()
        while self._next_named in self._closed:
            entry = self._closed.pop(self._next_named)
            self._next_named += 1
            if entry is not None:
                self.named_count += 1
                if len(self.named_first) < REPORT_FILES:
                    self.named_first.append(entry)
                self.on_named(entry)

    def summary(self) -> dict:
        """Totals over every closed file: files, records and bytes by outcome."""
        records: Counter = Counter()
        n_bytes: Counter = Counter()
        framing = skipped = files_read = files_skipped = 0
        for t in self.sources.values():
            records.update(t.records)
            n_bytes.update(t.bytes)
            framing += t.framing_bytes
            skipped += t.skipped_bytes
            files_read += t.files_read
            files_skipped += sum(t.skipped_files.values())
        dropped = sorted(k for k in records if k != KEPT)
        return {
            "files": {"read": files_read, "skipped": files_skipped, "named": self.named_count},
            "records": {
                "in": sum(records.values()),
                "kept": records[KEPT],
                "dropped": {k: records[k] for k in dropped},
            },
            "bytes": {
                "in": sum(n_bytes.values()) + framing + skipped,
                "kept": n_bytes[KEPT],
                "dropped": {k: n_bytes[k] for k in dropped},
                "framing": framing,
                "skipped_files": skipped,
            },
        }
