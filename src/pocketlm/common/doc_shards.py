"""The corpus artifact's document shards: Parquet files `docs/{split}-NNNNN.parquet` (text, source, origin)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

SPLITS = ("train", "val")
_SCHEMA = pa.schema([("text", pa.string()), ("source", pa.string()), ("origin", pa.string())])
_ROW_GROUP_BYTES = 8_000_000


class DocShardWriter:
    """Streams documents of one split into Parquet shards of about `shard_bytes` text each."""

    def __init__(self, directory: Path, split: str, shard_bytes: int) -> None:
        self.directory = directory
        self.split = split
        self.shard_bytes = shard_bytes
        self.files: list[str] = []
        self.docs = 0
        self.bytes = 0
        self._writer: pq.ParquetWriter | None = None
        self._shard_bytes_written = 0
        self._rows: dict[str, list[str]] = {"text": [], "source": [], "origin": []}
        self._buffered = 0

    def write(self, text: str, source: str, origin: str, n_bytes: int) -> None:
        """Append one document (n_bytes = its UTF-8 size)."""
        self._rows["text"].append(text)
        self._rows["source"].append(source)
        self._rows["origin"].append(origin)
        self._buffered += n_bytes
        self.docs += 1
        self.bytes += n_bytes
        if self._buffered >= _ROW_GROUP_BYTES:
            self._flush()

    def _flush(self) -> None:
        if not self._rows["text"]:
            return
        if self._writer is None:
            name = f"{self.split}-{len(self.files):05d}.parquet"
            self.files.append(f"docs/{name}")
            self._writer = pq.ParquetWriter(self.directory / name, _SCHEMA, compression="zstd")
        self._writer.write_table(pa.table(self._rows, schema=_SCHEMA))
        self._shard_bytes_written += self._buffered
        self._rows = {"text": [], "source": [], "origin": []}
        self._buffered = 0
        if self._shard_bytes_written >= self.shard_bytes:
            self._writer.close()
            self._writer = None
            self._shard_bytes_written = 0

    def close(self) -> list[str]:
        """Flush and close; returns the shard paths relative to the corpus directory."""
        self._flush()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        return self.files


def shard_paths(corpus_dir: str | Path, split: str) -> list[Path]:
    """The Parquet shards of one split, in order."""
    return sorted((Path(corpus_dir) / "docs").glob(f"{split}-*.parquet"))


def iter_texts(corpus_dir: str | Path, split: str, batch_rows: int = 1024) -> Iterator[list[str]]:
    """Batches of document texts from one split, streamed row group by row group."""
    for path in shard_paths(corpus_dir, split):
        pf = pq.ParquetFile(path)
        for batch in pf.iter_batches(batch_size=batch_rows, columns=["text"]):
            yield batch.column(0).to_pylist()
