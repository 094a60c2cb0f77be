"""Configuration of `pocketlm data build` and `pocketlm data encode`."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from pocketlm.data.filters import FilterThresholds
from pocketlm.data.records import OnBadRecord
from pocketlm.data.source_options import SourceOptions


@dataclass(frozen=True)
class CleanConfig:
    """Normalisation, quality filters and PII scrubbing."""

    unicode_form: Literal["NFC", "NFKC", "none"] = "NFC"
    min_chars: int = 32
    max_chars: int = 2_000_000
    max_dup_line_fraction: float = 0.5  # share of characters in repeated lines (1.0 turns it off)
    max_top_ngram_fraction: float = 0.25  # share of characters in the most common word 2-gram
    max_dup_ngram_fraction: float = 0.6  # share of characters inside repeated word 5-grams
    scrub_pii: bool = (
        False  # replace e-mails, phones, IPs and secrets with [EMAIL]-style placeholders
    )

    def __post_init__(self) -> None:
        if self.min_chars < 0 or self.max_chars < self.min_chars:
            raise ValueError("need 0 <= clean.min_chars <= clean.max_chars")
        for name in ("max_dup_line_fraction", "max_top_ngram_fraction", "max_dup_ngram_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"clean.{name} must be within [0, 1]")

    def thresholds(self) -> FilterThresholds:
        return FilterThresholds(
            self.min_chars,
            self.max_chars,
            self.max_dup_line_fraction,
            self.max_top_ngram_fraction,
            self.max_dup_ngram_fraction,
        )


@dataclass(frozen=True)
class DedupConfig:
    """Exact (content hash) and near-duplicate (MinHash LSH) removal."""

    exact: bool = True
    near: bool = True
    threshold: float = (
        0.8  # estimated Jaccard similarity of word 5-gram sets above which docs are duplicates
    )
    num_perm: int = 128
    shingle_words: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError("dedup.threshold must be in (0, 1)")
        if self.num_perm < 8:
            raise ValueError("dedup.num_perm must be >= 8")


@dataclass(frozen=True)
class CorpusConfig:
    """Everything `pocketlm data build` does, as one frozen value recorded in the manifest."""

    sources: SourceOptions = field(default_factory=SourceOptions)
    clean: CleanConfig = field(default_factory=CleanConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    val_fraction: float = 0.01  # share of documents (by content hash) held out for validation
    split_seed: int = 0
    min_val_docs: int = (
        2  # if the hash split gives fewer, the last kept documents move to validation
    )
    on_bad_record: OnBadRecord = "error"
    workers: int = 0  # 0 = one per CPU core
    shard_bytes: int = 256_000_000  # text bytes per output shard

    def __post_init__(self) -> None:
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError("val_fraction must be in [0, 1)")

    def source_options(self) -> SourceOptions:
        """`sources` with max_record_bytes resolved: 0 -> 4 bytes per character of clean.max_chars."""
        limit = self.sources.max_record_bytes or max(1024, 4 * self.clean.max_chars)
        return replace(self.sources, max_record_bytes=limit)


@dataclass(frozen=True)
class EncodeConfig:
    """How `pocketlm data encode` turns a corpus into token shards."""

    batch_docs: int = 512  # documents per encode_batch call
    add_bos: bool = True  # each document is <bos> text <eos>
    workers: int = 0  # 0 = tokenizers' own thread pool over all cores
