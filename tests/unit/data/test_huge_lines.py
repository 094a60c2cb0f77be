"""A line over sources.max_record_bytes is dropped unread (too_long_raw), with file, line and bytes,
and never held whole: peak memory stays far below the line's size."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

from pocketlm.data.accounting import Accounting
from pocketlm.data.config import CleanConfig, CorpusConfig
from pocketlm.data.readers import read_jsonl, read_text_file
from pocketlm.data.records import BadRecordLog
from pocketlm.data.source_options import SourceOptions
from tests.conftest import make_document

LIMIT = 1024


def _read(fn, path: Path, **opts):
    book = Accounting(BadRecordLog(policy="skip"), lambda n: None)
    ledger = book.open(path, "src")
    docs = list(fn(path, SourceOptions(max_record_bytes=LIMIT, **opts), ledger))
    book.done_reading(ledger)
    for doc in docs:
        book.settle(doc.file_id, "kept", doc.span_bytes)
    assert ledger.bytes_in == path.stat().st_size  # every byte accounted for
    return [d.text for d in docs], ledger.records, book.drop_examples


def test_huge_line_in_line_unit(tmp_path):
    p = tmp_path / "t.txt"
    p.write_bytes(b"first\n" + b"x" * 5000 + b"\n\nlast\n")
    texts, records, examples = _read(read_text_file, p, text_unit="line")
    assert texts == ["first", "last"]
    assert records == Counter({"kept": 2, "too_long_raw": 1})
    assert examples == [
        f"{p}, line 2, byte offset 6: line of 5,001 bytes is over the read limit of 1,024 bytes "
        "(sources.max_record_bytes) (too_long_raw)"
    ]


def test_paragraph_over_the_limit_is_dropped_whole(tmp_path):
    p = tmp_path / "t.md"
    small = b"a short line\n"
    p.write_bytes(b"para one\n\n" + small * 100 + b"\n" + small + b"y" * 3000 + b"\n\npara three\n")
    texts, records, examples = _read(read_text_file, p, text_unit="paragraph")
    assert texts == ["para one\n", "para three\n"]
    assert records == Counter({"kept": 2, "too_long_raw": 2})
    assert "line 3, byte offset 10: paragraph of 1,300 bytes" in examples[0]
    assert "line 104" in examples[1] and "paragraph of 3,014 bytes" in examples[1]


def test_big_file_is_cut_at_lines_and_loses_only_the_huge_line(tmp_path):
    p = tmp_path / "t.txt"
    p.write_bytes(b"before\n" * 200 + b"z" * 4000 + b"\n" + b"after\n" * 200)
    texts, records, _ = _read(read_text_file, p, max_doc_bytes=1024)
    assert "".join(texts) == "before\n" * 200 + "after\n" * 200
    assert records["too_long_raw"] == 1 and all(len(t) <= 1024 for t in texts)


def test_huge_jsonl_record_is_dropped_unread(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps({"text": "ok"}) + "\n" + json.dumps({"text": "q" * 2000}) + "\n")
    texts, records, examples = _read(read_jsonl, p)
    assert texts == ["ok"] and records == Counter({"kept": 1, "too_long_raw": 1})
    assert "d.jsonl, line 2, byte offset 15: line of 2,013 bytes" in examples[0]


def test_the_read_limit_follows_max_chars():
    assert CorpusConfig().source_options().max_record_bytes == 4 * CleanConfig().max_chars
    small = CorpusConfig(clean=CleanConfig(max_chars=10_000))
    assert small.source_options().max_record_bytes == 40_000
    explicit = CorpusConfig(sources=SourceOptions(max_record_bytes=5000))
    assert explicit.source_options().max_record_bytes == 5000


# Prints the peak resident-memory growth of a build over folders `small` and `big` of argv[1]
# (benchmarks/data_reliability.py runs it too).
PROBE = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from pocketlm.data.build import build_corpus
    from pocketlm.data.config import CorpusConfig

    def status(key):
        return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(key))

    work = Path(sys.argv[1])
    config = CorpusConfig(workers=1, val_fraction=0.0)
    # Warm up: a first build imports and touches everything the measured one uses.
    build_corpus([str(work / "small")], work / "warm", config)
    before = status("VmRSS:")
    started = time.perf_counter()
    out = build_corpus([str(work / "small"), str(work / "big")], work / "out", config)
    seconds = time.perf_counter() - started
    summary = json.loads((out / "manifest.json").read_text())["summary"]
    peak = status("VmHWM:")
    print(json.dumps({"growth": peak - before, "peak": peak, "seconds": seconds, "summary": summary}))
    """
)


ONE_LINE_FILES = {  # name -> (head, tail) around one huge line of text
    "line.txt": (b"", b""),
    "record.jsonl": (b'{"text": "', b'"}\n'),
    "row.csv": (b"text\n", b"\n"),
}


def write_probe_folders(work: Path, size_bytes: int, names=tuple(ONE_LINE_FILES)) -> None:
    """work/small: one ordinary document; work/big: one-line files of about size_bytes each."""
    (work / "small").mkdir()
    (work / "small" / "a.txt").write_text(make_document(random.Random(0), 12))
    (work / "big").mkdir()
    chunk = b"word " * 200_000  # 1 MB, written piece by piece
    for name in names:
        head, tail = ONE_LINE_FILES[name]
        with (work / "big" / name).open("wb") as fh:
            fh.write(head)
            for _ in range(size_bytes // len(chunk)):
                fh.write(chunk)
            fh.write(chunk[: size_bytes % len(chunk)] + tail)


def test_huge_lines_keep_peak_memory_far_below_their_size(tmp_path):
    """Three one-line 64 MB files (txt, jsonl, csv) under the default limit (8 MB)."""
    size_bytes = 64 * 1_000_000
    write_probe_folders(tmp_path, size_bytes)
    big = tmp_path / "big"
    r = subprocess.run(
        [sys.executable, "-c", PROBE, str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr
    probe = json.loads(r.stdout.splitlines()[-1])
    acc = probe["summary"]["accounting"]
    assert acc["records"]["dropped"]["too_long_raw"] == 3
    headers = len(ONE_LINE_FILES["row.csv"][0])  # the CSV header is framing, not the record
    assert acc["bytes"]["dropped"]["too_long_raw"] == (
        sum((big / name).stat().st_size for name in ONE_LINE_FILES) - headers
    )
    # Reading a line whole costs its size at least (it cost ~20x before the limit); bounded
    # reading costs about twice the 8 MB limit. Half a file is a bound that cannot flake.
    assert probe["growth"] < size_bytes // 2, probe["growth"]
