"""No silent drop: on generated folders of mixed files, data build accounts for every record and byte.

With --on-bad-record skip, records in = kept + dropped by reason and bytes in = kept + dropped +
framing + skipped files, against counts the generator knows; every file that lost anything is
named in dropped_files.jsonl with the right counts. With the default policy the build stops at
the first bad record, naming its file, line and byte offset.
"""

from __future__ import annotations

import json
import random
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pocketlm.common.config import replace
from pocketlm.common.doc_shards import shard_paths
from pocketlm.common.errors import InputError
from pocketlm.common.manifest import read_manifest
from pocketlm.data.build import DROPPED_FILES, build_corpus
from pocketlm.data.config import CorpusConfig
from tests.conftest import make_document, make_sentence

LIMIT = 2048  # sources.max_record_bytes: "huge" lines are a few KB so examples stay fast
CONFIG = CorpusConfig(val_fraction=0.0, min_val_docs=0, workers=1)
CONFIG = replace(CONFIG, **{"sources.max_record_bytes": LIMIT})


@dataclass
class Truth:
    """What the generator put in one file: records by fate, where the first bad one starts."""

    path: Path
    records: int = 0
    bad: Counter = field(default_factory=Counter)  # kind -> records
    too_long: int = 0
    skipped: str | None = None  # the whole file is skipped unread, for this reason
    first_bad: tuple[int, int, int, int | None] | None = None  # line, line offset, size, offset

    def note_bad(self, kind: str, line: int, offset: int, size: int, exact: int | None) -> None:
        self.bad[kind] += 1
        if self.first_bad is None:
            self.first_bad = (line, offset, size, exact)


class _Lines:
    """Accumulates a line-based file and the truth about it."""

    def __init__(self, truth: Truth) -> None:
        self.truth, self.data, self.line = truth, b"", 0

    def add(self, raw: bytes, fate: str | None = None, exact_at: int | None = None) -> None:
        """Append one line (or CSV record); fate: None framing, 'ok', 'huge' or a bad kind."""
        self.line += 1
        offset = len(self.data)
        self.data += raw
        if fate is None:
            return
        self.truth.records += 1
        if fate == "huge":
            self.truth.too_long += 1
        elif fate != "ok":
            exact = None if exact_at is None else offset + exact_at
            self.truth.note_bad(fate, self.line, offset, len(raw), exact)
        self.line += raw.count(b"\n") - 1  # a CSV record may span lines


def _text_file(kind: str, rng: random.Random, truth: Truth, earlier: list[bytes]) -> bytes:
    doc = make_document(rng, 8).encode()
    if kind == "empty":
        truth.records = 1  # one document per file, removed as too short
        return b""
    if kind == "binary":
        truth.skipped = "binary"
        return b"PK\x03\x04\x00\x00" + doc
    if kind == "dup" and earlier:
        truth.records = 1
        return rng.choice(earlier)
    if kind == "latin1":
        lines = _Lines(truth)
        lines.add(b"caf\xe9 " + doc, "invalid_utf8", exact_at=3)
        return lines.data
    if kind == "huge":  # a big file read line by line: text, a line over the limit, text
        before, after = make_sentence(rng).encode() + b"\n", make_sentence(rng).encode()
        truth.records, truth.too_long = 3, 1
        return before + b"y" * (LIMIT + rng.randint(1, 3000)) + b"\n" + after
    truth.records = 1
    earlier.append(doc)
    return doc


def _jsonl_file(kinds: list[str], rng: random.Random, truth: Truth) -> bytes:
    lines = _Lines(truth)
    for kind in kinds:
        text = " ".join(make_sentence(rng) for _ in range(3))
        if kind == "blank":
            lines.add(b"\n")
        elif kind == "invalid_json":
            lines.add(b'{"text": "' + text.encode() + b"\n", kind)
        elif kind == "missing_field":
            lines.add(json.dumps({"body": text}).encode() + b"\n", kind, exact_at=0)
        elif kind == "wrong_type":
            lines.add(json.dumps({"text": len(text)}).encode() + b"\n", kind, exact_at=0)
        elif kind == "invalid_utf8":
            lines.add(b'{"text": "\xff' + text.encode() + b'"}\n', kind, exact_at=10)
        elif kind == "huge":
            record = json.dumps({"text": "z" * (LIMIT + rng.randint(0, 500))}).encode()
            lines.add(record + b"\n", kind)
        else:
            lines.add(json.dumps({"text": text}).encode() + b"\n", "ok")
    return lines.data


def _csv_file(kinds: list[str], rng: random.Random, truth: Truth) -> bytes:
    lines = _Lines(truth)
    lines.add(b"id,text\n")
    for i, kind in enumerate(kinds):
        text = " ".join(make_sentence(rng) for _ in range(3))  # letters, spaces, dots: no quotes
        if kind == "blank":
            lines.add(b"\n")
        elif kind == "open_quote":
            lines.add(f'{i},"{text}, never closed\n'.encode(), "invalid_csv", exact_at=0)
        elif kind == "extra_field":
            lines.add(f"{i},{text},extra\n".encode(), "invalid_csv", exact_at=0)
        elif kind == "invalid_utf8":
            lines.add(f"{i},".encode() + b"\xfe" + text.encode() + b"\n", kind, exact_at=2)
        elif kind == "huge":
            lines.add(f"{i},{'w' * (LIMIT + rng.randint(0, 500))}\n".encode(), kind)
        elif kind == "multiline":
            lines.add(f'{i},"{text},\n{make_sentence(rng)}"\n'.encode(), "ok")
        else:
            lines.add(f"{i},{text}\n".encode(), "ok")
    return lines.data


_TEXT = st.sampled_from(["good", "good", "empty", "binary", "dup", "latin1", "huge"])
_JSONL = st.lists(
    st.sampled_from(
        ["ok", "ok", "blank", "invalid_json", "missing_field", "wrong_type", "invalid_utf8", "huge"]
    ),
    max_size=6,
)
_CSV = st.lists(
    st.sampled_from(
        ["ok", "ok", "blank", "open_quote", "extra_field", "invalid_utf8", "huge", "multiline"]
    ),
    max_size=6,
)
FILES = st.lists(
    st.one_of(
        st.tuples(st.just("txt"), _TEXT),
        st.tuples(st.just("jsonl"), _JSONL),
        st.tuples(st.just("csv"), _CSV),
        st.tuples(st.just("bin"), st.just(None)),
    ),
    min_size=1,
    max_size=8,
)


def make_folder(root: Path, files: list, seed: int) -> list[Truth]:
    rng = random.Random(seed)
    truths, earlier = [], []
    for i, (ext, spec) in enumerate(files):
        path = root / f"f{i:02d}.{ext}"
        truth = Truth(path)
        if ext == "txt":
            data = _text_file(spec, rng, truth, earlier)
        elif ext == "jsonl":
            data = _jsonl_file(spec, rng, truth)
        elif ext == "csv":
            data = _csv_file(spec, rng, truth)
        else:
            truth.skipped, data = "unsupported type .bin", rng.randbytes(rng.randint(0, 300))
        path.write_bytes(data)
        truths.append(truth)
    anchor = root / "zz_anchor.txt"  # one document that is always kept: the build never ends empty
    anchor.write_text(make_document(rng, 8))
    truths.append(Truth(anchor, records=1))
    return truths


def check_skip(root: Path, out: Path, truths: list[Truth]) -> None:
    corpus = build_corpus([str(root)], out, replace(CONFIG, on_bad_record="skip"))
    s = read_manifest(corpus)["summary"]
    acc = s["accounting"]
    records, n_bytes = acc["records"], acc["bytes"]
    dropped = records["dropped"]
    # The balance, on both sides of the ledger.
    assert records["in"] == records["kept"] + sum(dropped.values())
    assert (
        n_bytes["in"]
        == (n_bytes["kept"] + sum(n_bytes["dropped"].values()) + n_bytes["framing"])
        + n_bytes["skipped_files"]
    )
    # Against what was generated.
    assert n_bytes["in"] == sum(t.path.stat().st_size for t in truths)
    assert records["in"] == sum(t.records for t in truths)
    skipped = [t for t in truths if t.skipped]
    assert n_bytes["skipped_files"] == sum(t.path.stat().st_size for t in skipped)
    assert acc["files"] == {
        "read": len(truths) - len(skipped),
        "skipped": len(skipped),
        "named": acc["files"]["named"],
    }
    bad = sum((t.bad for t in truths), Counter())
    assert {k: n for k, n in dropped.items() if k.startswith("bad:")} == {
        f"bad:{k}": n for k, n in bad.items()
    }
    assert dropped.get("too_long_raw", 0) == sum(t.too_long for t in truths)
    assert s["bad_records"]["counts"] == dict(bad)
    kept_docs = sum(s["splits"][split]["docs"] for split in ("train", "val"))
    assert kept_docs == records["kept"] >= 1
    # Every dropped record sits in a named file; every file that lost something is named.
    named = [json.loads(line) for line in (corpus / DROPPED_FILES).read_text().splitlines()]
    assert len(named) == acc["files"]["named"] == s["dropped_files"]["count"]
    per_reason: Counter = Counter()
    for entry in named:
        per_reason.update(entry.get("dropped", {}))
    assert per_reason == Counter(dropped)
    by_path = {e["path"]: e for e in named}
    report = (corpus / "data_report.md").read_text()
    for t in truths:
        entry = by_path.get(str(t.path))
        if t.skipped:
            assert entry["status"] == "skipped" and entry["reason"] == t.skipped
            assert entry["bytes_in"] == t.path.stat().st_size
        elif t.bad or t.too_long or t.records == 0:
            assert entry is not None and entry["records_in"] == t.records
            assert entry["bytes_in"] == t.path.stat().st_size
            assert entry["dropped"].get("too_long_raw", 0) == t.too_long
            for kind, n in t.bad.items():
                assert entry["dropped"][f"bad:{kind}"] == n
        if entry is not None:
            assert f"`{t.path}`" in report  # at most 50 files here: all are in the markdown


def check_stop(root: Path, out: Path, truths: list[Truth]) -> None:
    first = next((t for t in truths if t.first_bad), None)
    if first is None:
        build_corpus([str(root)], out, CONFIG)  # nothing bad: the default policy builds too
        return
    with pytest.raises(InputError) as err:
        build_corpus([str(root)], out, CONFIG)
    line, line_offset, size, exact = first.first_bad
    assert err.value.path == str(first.path) and err.value.line == line
    if exact is not None:
        assert err.value.byte_offset == exact
    else:
        assert line_offset <= err.value.byte_offset < line_offset + size
    assert not out.exists()


def _property(files: list, seed: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "in"
        root.mkdir()
        truths = make_folder(root, files, seed)
        check_skip(root, Path(tmp) / "skip", truths)
        check_stop(root, Path(tmp) / "stop", truths)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(files=FILES, seed=st.integers(0, 2**16))
def test_every_record_and_byte_is_accounted_for(files, seed):
    _property(files, seed)


@pytest.mark.slow
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(files=FILES, seed=st.integers(0, 2**16))
def test_every_record_and_byte_is_accounted_for_many(files, seed):
    _property(files, seed)


def test_a_folder_of_code_filtered_whole_is_named(tmp_path):
    """The issue's case: files dropped whole by the repetition filter are named, bytes and all."""
    src = tmp_path / "code"
    src.mkdir()
    r = random.Random(3)
    (src / "fine.py").write_text(make_document(r, 12))
    generated = "x_value = compute_the_value(argument_one, argument_two)\n" * 200
    (src / "generated.py").write_text(generated)
    corpus = build_corpus([str(src)], tmp_path / "c", CONFIG)
    named = [json.loads(line) for line in (corpus / DROPPED_FILES).read_text().splitlines()]
    assert named == [
        {
            "path": str(src / "generated.py"),
            "source": str(src),
            "status": "dropped",
            "reason": "repeated_lines",
            "records_in": 1,
            "records_kept": 0,
            "dropped": {"repeated_lines": 1},
            "bytes_in": len(generated),
            "bytes_kept": 0,
            "bytes_dropped": {"repeated_lines": len(generated)},
        }
    ]
    report = (corpus / "data_report.md").read_text()
    assert "## Files dropped or cut (1)" in report and "generated.py" in report
    assert _texts(corpus) == [(src / "fine.py").read_text()]


def test_a_long_list_of_dropped_files_is_capped_in_the_markdown(tmp_path):
    src = tmp_path / "s"
    src.mkdir()
    for i in range(60):
        (src / f"tiny{i:02d}.txt").write_text("too short")
    (src / "keep.txt").write_text(make_document(random.Random(1), 8))
    corpus = build_corpus([str(src)], tmp_path / "c", CONFIG)
    lines = (corpus / DROPPED_FILES).read_text().splitlines()
    assert [json.loads(x)["path"] for x in lines] == [
        str(src / f"tiny{i:02d}.txt") for i in range(60)
    ]
    report = (corpus / "data_report.md").read_text()
    assert "tiny49.txt" in report and "tiny50.txt" not in report
    assert f"… and 10 more in `{DROPPED_FILES}`" in report


def _texts(corpus: Path) -> list[str]:
    import pyarrow.parquet as pq

    return [
        t for p in shard_paths(corpus, "train") for t in pq.read_table(p).column("text").to_pylist()
    ]


def test_unreadable_files_and_broken_links_stop_the_build_or_are_named(tmp_path):
    """Permission denied and a dangling symlink: an error naming the file by default, a named
    skip with --on-bad-record skip; never a traceback, never a silent pass."""
    import json
    import os

    from pocketlm.common.errors import InputError
    from pocketlm.data.build import build_corpus
    from pocketlm.data.config import CorpusConfig

    src = tmp_path / "src"
    src.mkdir()
    from tests.conftest import make_document

    rng = random.Random(3)
    for i in range(3):
        (src / f"ok{i}.txt").write_text(make_document(rng, 16))
    locked = src / "locked.txt"
    locked.write_text("secret " * 50)
    (src / "gone.txt").symlink_to(src / "nowhere.txt")
    os.chmod(locked, 0)
    if os.access(locked, os.R_OK):  # root reads anything: only the broken link is tested then
        os.chmod(locked, 0o644)
        locked.unlink()
    try:
        with pytest.raises(InputError, match=r"cannot read the file"):
            build_corpus([str(src)], tmp_path / "stop")
        out = build_corpus(
            [str(src)], tmp_path / "skip", CorpusConfig(on_bad_record="skip", val_fraction=0.0)
        )
    finally:
        if locked.exists():
            os.chmod(locked, 0o644)
    named = [json.loads(line) for line in (out / "dropped_files.jsonl").read_text().splitlines()]
    paths = {Path(entry["path"]).name for entry in named}
    assert "gone.txt" in paths and (not locked.exists() or "locked.txt" in paths)
