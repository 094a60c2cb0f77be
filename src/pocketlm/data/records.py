"""Documents flowing through the corpus pipeline and the bad-record policy."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

from pocketlm.common.errors import InputError
from pocketlm.common.log import get_logger

OnBadRecord = Literal["error", "skip"]
_log = get_logger("pocketlm.data")


@dataclass(frozen=True, slots=True)
class Document:
    """One document: its text, the source label it came from, and where (file:line) for messages."""

    text: str
    source: str
    origin: str
    span_bytes: int = 0  # bytes it took in its file (the whole JSONL line, CSV record, ...)
    file_id: int = -1  # the FileLedger it is settled in (pocketlm.data.accounting)


@dataclass
class BadRecordLog:
    """Applies --on-bad-record: raise the InputError, or count it (with a few examples) and go on."""

    policy: OnBadRecord = "error"
    counts: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    max_examples: int = 20

    def handle(self, error: InputError, kind: str) -> None:
        """Raise under 'error'; under 'skip' log, count by kind and keep the first examples."""
        if self.policy == "error":
            raise InputError(
                error.reason,
                path=error.path,
                line=error.line,
                byte_offset=error.byte_offset,
                hint=error.hint
                or "fix the record, or pass --on-bad-record skip to count and skip it",
            )
        self.counts[kind] += 1
        if len(self.examples) < self.max_examples:
            self.examples.append(str(error).splitlines()[0])
        _log.warning("skipped bad record: %s", str(error).splitlines()[0])

    @property
    def total(self) -> int:
        return sum(self.counts.values())
