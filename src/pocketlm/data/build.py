"""`pocketlm data build`: sources -> normalise -> filter -> dedup -> split -> Parquet shards + report.

Streaming with bounded memory: documents are read lazily, processed in batches by worker
processes (normalise, PII, filters, hashes, MinHash), and written as they arrive. What grows
with the corpus is only the dedup index, in numpy arrays: about 0.6 KB per kept document
(exact hashes, 16-bit MinHash signatures, LSH band keys), never the text.

Nothing is dropped silently: every record and byte is settled in its file's ledger
(accounting.py), the report's totals add up, and every file that lost anything is named in
dropped_files.jsonl (the first ones in data_report.md).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pocketlm.common.config import to_dict
from pocketlm.common.doc_shards import DocShardWriter
from pocketlm.common.errors import InputError
from pocketlm.common.log import get_logger
from pocketlm.common.manifest import ArtifactWriter
from pocketlm.common.parallel import ordered_map, resolve_workers
from pocketlm.common.progress import progress_bar
from pocketlm.data.accounting import BAD_PREFIX, KEPT, Accounting, SourceTotals
from pocketlm.data.config import CleanConfig, CorpusConfig, DedupConfig
from pocketlm.data.dedup import IntTable, LSHIndex, MinHasher, content_hash
from pocketlm.data.filters import check_document
from pocketlm.data.ngrams import WordArrays, word_arrays
from pocketlm.data.normalize import normalize_text
from pocketlm.data.pii import scrub_pii
from pocketlm.data.records import BadRecordLog, Document
from pocketlm.data.report import LengthHistogram, render_report
from pocketlm.data.sources import describe_source, iter_source, stdlib_docs_bytes, stdlib_files

CORPUS_KIND = "corpus"
_BATCH_BYTES = 1_000_000
_BATCH_DOCS = 256
_INLINE_BELOW_BYTES = 4_000_000  # below this, worker start-up costs more than it saves
DROPPED_FILES = "dropped_files.jsonl"  # every file that lost records or was skipped, one per line
_log = get_logger("pocketlm.data.build")
_NO_WORDS = WordArrays(np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.int64))


@dataclass(frozen=True)
class _Processed:
    text: str | None  # None when a filter removed it
    source: str
    origin: str
    reason: str | None
    file_id: int
    span_bytes: int  # bytes the document took in its file
    raw_bytes: int
    clean_bytes: int
    pii: Counter
    digest: int
    signature: np.ndarray | None


def _process_batch(args: tuple[list[Document], CleanConfig, DedupConfig]) -> list[_Processed]:
    """Worker: normalise, scrub, filter, hash and MinHash a batch of documents (pure)."""
    docs, clean, dedup = args
    limits = clean.thresholds()
    hasher = MinHasher(dedup.num_perm, dedup.shingle_words, dedup.seed) if dedup.near else None
    out = []
    for doc in docs:
        raw_bytes = len(doc.text.encode("utf-8"))
        text = normalize_text(doc.text, clean.unicode_form)
        pii: Counter = Counter()
        if clean.scrub_pii:
            text, pii = scrub_pii(text)
        # A text the length filter removes needs no words (tens of MB of them for a huge line).
        sized = limits.min_chars <= len(text) <= limits.max_chars
        words = word_arrays(text) if sized else _NO_WORDS
        reason = check_document(text, limits, words)
        clean_bytes = len(text.encode("utf-8"))
        if reason is not None:
            out.append(
                _Processed(
                    None,
                    doc.source,
                    doc.origin,
                    reason,
                    doc.file_id,
                    doc.span_bytes,
                    raw_bytes,
                    clean_bytes,
                    pii,
                    0,
                    None,
                )
            )
            continue
        signature = hasher.signature(words) if hasher is not None else None
        out.append(
            _Processed(
                text,
                doc.source,
                doc.origin,
                None,
                doc.file_id,
                doc.span_bytes,
                raw_bytes,
                clean_bytes,
                pii,
                content_hash(text),
                signature,
            )
        )
    return out


def _batches(
    docs: Iterator[Document], clean: CleanConfig, dedup: DedupConfig
) -> Iterator[tuple[list[Document], CleanConfig, DedupConfig]]:
    batch: list[Document] = []
    size = 0
    for doc in docs:
        batch.append(doc)
        size += len(doc.text)
        if size >= _BATCH_BYTES or len(batch) >= _BATCH_DOCS:
            yield batch, clean, dedup
            batch, size = [], 0
    if batch:
        yield batch, clean, dedup


def _source_bytes(spec: str) -> int | None:
    kind = describe_source(spec)
    if kind == "stdlib":
        return sum(p.stat().st_size for p in stdlib_files()) + stdlib_docs_bytes()
    if kind == "file":
        return Path(spec).stat().st_size
    if kind == "dir":
        return sum(p.stat().st_size for p in Path(spec).rglob("*") if p.is_file())
    return None


def _source_summary(book: Accounting, spec: str, written: Counter) -> dict:
    totals = book.sources.get(spec) or SourceTotals()
    return {
        "files": totals.files_read,
        "skipped_files": dict(totals.skipped_files),
        "records_in": sum(totals.records.values()),
        "records_kept": totals.records[KEPT],
        "bytes_in": sum(totals.bytes.values()) + totals.framing_bytes + totals.skipped_bytes,
        "docs_written": written["docs"],
        "bytes_written": written["bytes"],
    }


def is_validation(digest: int, val_fraction: float, seed: int) -> bool:
    """Deterministic split by content hash: the same text always lands in the same split."""
    mixed = (digest * 0x9E3779B97F4A7C15 + seed * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    return (mixed >> 11) / float(1 << 53) < val_fraction


def build_corpus(
    sources: Sequence[str],
    out: str | Path,
    config: CorpusConfig | None = None,
    *,
    command: Sequence[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Build a cleaned, deduplicated, split corpus artifact from `sources`; returns its directory."""
    config = config or CorpusConfig()
    if not sources:
        raise InputError("no sources given", hint="name files, folders, 'stdlib' or hf:DATASET")
    for spec in sources:
        describe_source(spec)  # fail early on a missing path
    totals = [_source_bytes(s) for s in sources]
    total_bytes = None if any(t is None for t in totals) else sum(totals)  # type: ignore[arg-type]
    workers = resolve_workers(config.workers)
    if total_bytes is not None and total_bytes < _INLINE_BELOW_BYTES:
        workers = 1

    bad = BadRecordLog(policy=config.on_bad_record)
    kept_per_source: dict[str, Counter] = {s: Counter() for s in sources}
    pii_total: Counter = Counter()
    histogram = LengthHistogram()
    seen_hashes = IntTable()  # exact-duplicate hashes: 12-24 bytes per document
    lsh = LSHIndex(config.dedup.threshold, config.dedup.num_perm) if config.dedup.near else None
    held: list[_Processed] = []
    docs_read = 0
    size_change = 0
    started = time.perf_counter()

    parents = [{"path": s, "kind": "source"} for s in sources]
    with (
        ArtifactWriter(
            out,
            CORPUS_KIND,
            config=to_dict(config),
            parents=parents,
            command=command,
            overwrite=overwrite,
        ) as art,
        ExitStack() as closing,
    ):
        docs_dir = art.path("docs/.keep").parent
        writers = {
            split: DocShardWriter(docs_dir, split, config.shard_bytes) for split in ("train", "val")
        }
        bar = progress_bar(total_bytes, desc="data build", unit="B")
        named_file = closing.enter_context(art.path(DROPPED_FILES).open("w", encoding="utf-8"))
        book = Accounting(bad, bar.update, lambda entry: named_file.write(json.dumps(entry) + "\n"))
        options = config.source_options()

        def stream() -> Iterator[Document]:
            for spec in sources:
                yield from iter_source(spec, options, book)

        for batch in ordered_map(
            _process_batch, _batches(stream(), config.clean, config.dedup), workers
        ):
            for item in batch:
                docs_read += 1
                pii_total.update(item.pii)
                if item.reason is not None:
                    book.settle(item.file_id, item.reason, item.span_bytes)
                    continue
                if config.dedup.exact and not seen_hashes.put_if_absent(item.digest, 0):
                    book.settle(item.file_id, "exact_duplicate", item.span_bytes)
                    continue
                if lsh is not None and not lsh.add_if_new(item.signature):
                    book.settle(item.file_id, "near_duplicate", item.span_bytes)
                    continue
                book.settle(item.file_id, KEPT, item.span_bytes)
                split = (
                    "val"
                    if is_validation(item.digest, config.val_fraction, config.split_seed)
                    else "train"
                )
                if split == "train" and config.min_val_docs and config.val_fraction > 0:
                    # Hold the latest train documents back: if the hash split leaves the validation
                    # split short (a small corpus), they move there at the end. Bounded: min_val_docs docs.
                    held.append(item)
                    if len(held) > config.min_val_docs:
                        old = held.pop(0)
                        writers["train"].write(old.text, old.source, old.origin, old.clean_bytes)
                else:
                    writers[split].write(item.text, item.source, item.origin, item.clean_bytes)
                size_change += item.clean_bytes - item.raw_bytes
                kept_per_source[item.source]["docs"] += 1
                kept_per_source[item.source]["bytes"] += item.clean_bytes
                histogram.add(len(item.text))
        bar.close()
        short = max(0, config.min_val_docs - writers["val"].docs)
        move = min(short, len(held) - 1) if writers["train"].docs == 0 else min(short, len(held))
        for i, item in enumerate(held):
            target = "val" if i >= len(held) - move else "train"
            writers[target].write(item.text, item.source, item.origin, item.clean_bytes)
        if move:
            _log.info(
                "moved %d documents to the validation split (min_val_docs=%d)",
                move,
                config.min_val_docs,
            )
        files = {split: w.close() for split, w in writers.items()}
        docs_dir.joinpath(".keep").unlink(missing_ok=True)

        if book.open_files:  # a reader or this loop lost track of a document: a bug, not bad input
            raise RuntimeError(f"{book.open_files} input files were never settled")
        named_file.close()
        accounting = book.summary()
        removed = {
            k: n
            for k, n in accounting["records"]["dropped"].items()
            if not k.startswith(BAD_PREFIX)
        }
        if writers["train"].docs == 0:
            reasons = ", ".join(f"{r}: {n}" for r, n in Counter(removed).most_common()) or "none"
            raise InputError(
                f"no documents left for training: {docs_read} read, removed by filters: {reasons}; "
                f"{bad.total} bad records skipped",
                path=", ".join(sources),
                hint="check the sources, or relax filters, e.g. --set clean.min_chars=1",
            )
        if writers["val"].docs == 0:
            _log.warning(
                "validation split is empty (%d documents kept); raise val_fraction or add data",
                writers["train"].docs,
            )

        seconds = time.perf_counter() - started
        summary = {
            "seconds": round(seconds, 2),
            "mb_per_s": round(accounting["bytes"]["in"] / 1e6 / max(seconds, 1e-9), 2),
            "docs_read": docs_read,
            "bytes_read": accounting["bytes"]["in"],
            "bytes_changed_by_cleaning": size_change,
            "splits": {
                s: {"docs": w.docs, "bytes": w.bytes, "files": files[s]} for s, w in writers.items()
            },
            "removed": {
                "docs": removed,
                "bytes": {k: accounting["bytes"]["dropped"][k] for k in removed},
            },
            "accounting": accounting,
            "dropped_files": {
                "file": DROPPED_FILES,
                "count": book.named_count,
                "first": book.named_first,
            },
            "dropped_unread_examples": book.drop_examples,
            "pii": dict(pii_total),
            "bad_records": {
                "total": bad.total,
                "counts": dict(bad.counts),
                "examples": bad.examples,
            },
            "sources": {s: _source_summary(book, s, kept_per_source[s]) for s in sources},
            "dedup": {
                "threshold": config.dedup.threshold,
                "num_perm": config.dedup.num_perm,
                "shingle_words": config.dedup.shingle_words,
                "bands": lsh.bands if lsh else 0,
                "rows": lsh.rows if lsh else 0,
            },
        }
        histogram.save_png(
            art.path("doc_lengths.png"),
            f"Document lengths ({writers['train'].docs + writers['val'].docs:,} kept)",
        )
        art.path("data_report.md").write_text(render_report(summary), encoding="utf-8")
        path = art.commit(summary)
    _log.info(
        "corpus: %s train docs, %s val docs -> %s", writers["train"].docs, writers["val"].docs, path
    )
    return path
