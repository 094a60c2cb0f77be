"""Options for reading sources (kept apart so readers and the build config share them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

DEFAULT_RECORD_LIMIT_BYTES = 8_000_000  # 4 bytes x the default clean.max_chars


@dataclass(frozen=True)
class SourceOptions:
    """How to turn files into documents."""

    text_field: str = (
        "text"  # jsonl / parquet / HF datasets: the field holding text ("a.b" for nested)
    )
    csv_column: str = "text"  # csv / tsv: the column holding text
    text_unit: Literal["file", "paragraph", "line"] = (
        "file"  # txt/md/code: one doc per file, paragraph or line
    )
    hf_split: str = "train"  # HF datasets: which split to read from a DatasetDict or the hub
    max_doc_bytes: int = 1_000_000  # larger text files are cut into docs at line boundaries
    include_hidden: bool = False  # read dot-files and dot-folders too
    # A line or record over this many bytes is dropped unread (too_long_raw), so one huge line
    # never sits in memory. 0: 4 x clean.max_chars, the most UTF-8 bytes that many characters take.
    max_record_bytes: int = 0
    csv_max_record_lines: int = 1000  # a CSV record spanning more lines is malformed (open quote)

    def __post_init__(self) -> None:
        if self.max_doc_bytes < 1024:
            raise ValueError("sources.max_doc_bytes must be at least 1024")
        if self.max_record_bytes and self.max_record_bytes < 1024:
            raise ValueError("sources.max_record_bytes must be 0 (automatic) or at least 1024")
        if self.csv_max_record_lines < 1:
            raise ValueError("sources.csv_max_record_lines must be at least 1")

    def record_limit_bytes(self) -> int:
        """The read limit per line or record (the build resolves 0 from clean.max_chars)."""
        return self.max_record_bytes or DEFAULT_RECORD_LIMIT_BYTES
