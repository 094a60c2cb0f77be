"""Reading a file line by line with a byte limit per line, so one huge line never sits in memory."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

OnBytes = Callable[[int], None]
_SKIP_CHUNK_BYTES = 1 << 20  # a line over the limit is skipped in pieces of this size


@dataclass(frozen=True, slots=True)
class Line:
    """One line of a file: number from 1, byte offset of its first byte, size with its newline."""

    number: int
    offset: int
    size_bytes: int
    raw: bytes | None  # None when the line is over the limit: it was skipped, never held whole

    @property
    def end(self) -> int:
        """Byte offset just after the line."""
        return self.offset + self.size_bytes


def iter_lines(
    fh: BinaryIO,
    limit_bytes: int,
    on_bytes: OnBytes,
    *,
    first_line: int = 1,
    offset: int = 0,
) -> Iterator[Line]:
    """Lines of a binary file from its current position; a line over limit_bytes comes with raw=None."""
    number = first_line
    while True:
        raw: bytes | None = fh.readline(limit_bytes + 1)
        if not raw:
            return
        size = len(raw)
        if size > limit_bytes:
            complete = raw.endswith(b"\n")
            raw = None  # let the partial line go before reading the rest of it
            while not complete:
                piece = fh.readline(_SKIP_CHUNK_BYTES)
                size += len(piece)
                complete = not piece or piece.endswith(b"\n")
        yield Line(number, offset, size, raw)
        on_bytes(size)
        offset += size
        number += 1
