"""Options for reading sources (kept apart so readers and the build config share them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


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

    def __post_init__(self) -> None:
        if self.max_doc_bytes < 1024:
            raise ValueError("sources.max_doc_bytes must be at least 1024")
