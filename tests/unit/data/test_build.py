from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from pocketlm.common.doc_shards import shard_paths
from pocketlm.common.errors import InputError
from pocketlm.common.manifest import read_manifest
from pocketlm.data.build import build_corpus, is_validation
from pocketlm.data.config import CleanConfig, CorpusConfig
from pocketlm.data.dedup import content_hash


def _texts(corpus, split):
    return [
        t for p in shard_paths(corpus, split) for t in pq.read_table(p).column("text").to_pylist()
    ]


def test_build_user_folder_filters_dedups_and_reports(text_folder, tmp_path):
    out = build_corpus([str(text_folder)], tmp_path / "corpus", CorpusConfig(val_fraction=0.2))
    m = read_manifest(out, kind="corpus")
    s = m["summary"]
    assert s["removed"]["docs"]["exact_duplicate"] == 1
    assert s["removed"]["docs"]["near_duplicate"] == 1
    assert s["removed"]["docs"]["too_short"] == 1
    src = s["sources"][str(text_folder)]
    assert src["skipped_files"] == {"unsupported type .bin": 1}
    train, val = _texts(out, "train"), _texts(out, "val")
    assert len(train) + len(val) == 30 + 2  # 30 unique docs + script.py + page.html
    assert val, "a 20% validation split of 32 docs should not be empty"
    assert any("def add(a, b):" in t for t in train + val)
    html = next(t for t in train + val if "Heading" in t)
    assert "<p>" not in html and "var x" not in html and "&amp;" not in html
    report = (out / "data_report.md").read_text()
    for needle in (
        "exact_duplicate",
        "near_duplicate",
        "too_short",
        "## Sources",
        "doc_lengths.png",
    ):
        assert needle in report
    assert (out / "doc_lengths.png").stat().st_size > 1000
    for t in val:
        assert is_validation(content_hash(t), 0.2, 0)


def test_split_is_deterministic_by_content(text_folder, tmp_path):
    a = build_corpus([str(text_folder)], tmp_path / "a", CorpusConfig(val_fraction=0.3))
    b = build_corpus([str(text_folder)], tmp_path / "b", CorpusConfig(val_fraction=0.3, workers=2))
    assert _texts(a, "val") == _texts(b, "val") and _texts(a, "train") == _texts(b, "train")


def test_empty_result_is_an_error_that_says_why(tmp_path):
    src = tmp_path / "s"
    src.mkdir()
    (src / "a.txt").write_text("tiny")
    with pytest.raises(
        InputError,
        match=r"no documents left for training: 1 read, removed by filters: too_short: 1",
    ):
        build_corpus([str(src)], tmp_path / "out", CorpusConfig())
    assert not (tmp_path / "out").exists()


def test_bad_records_skipped_are_counted_in_report(tmp_path):
    src = tmp_path / "s"
    src.mkdir()
    (src / "good.txt").write_text("A perfectly fine document with enough characters to pass.")
    (src / "bad.txt").write_bytes(b"caf\xe9 is not utf-8 and this line is long enough to count")
    with pytest.raises(InputError, match="bad.txt, line 1, byte offset 3"):
        build_corpus([str(src)], tmp_path / "o1", CorpusConfig())
    out = build_corpus([str(src)], tmp_path / "o2", CorpusConfig(on_bad_record="skip"))
    assert read_manifest(out)["summary"]["bad_records"]["counts"] == {"invalid_utf8": 1}
    assert "1 bad records were skipped" in (out / "data_report.md").read_text()


def test_pii_scrubbing_is_reported(tmp_path):
    src = tmp_path / "s"
    src.mkdir()
    (src / "a.txt").write_text(
        "Contact bob@example.org about the quarterly numbers and the launch plan."
    )
    out = build_corpus(
        [str(src)],
        tmp_path / "o",
        CorpusConfig(clean=CleanConfig(scrub_pii=True), val_fraction=0.0),
    )
    assert _texts(out, "train") == [
        "Contact [EMAIL] about the quarterly numbers and the launch plan."
    ]
    assert read_manifest(out)["summary"]["pii"] == {"email": 1}


def test_stdlib_source_builds(tmp_path):
    from pocketlm.data.sources import stdlib_files

    assert len(stdlib_files()) > 100
    out = build_corpus(["stdlib"], tmp_path / "std", CorpusConfig(workers=1))
    s = read_manifest(out)["summary"]
    assert s["splits"]["train"]["bytes"] > 5_000_000
    assert s["sources"]["stdlib"]["files"] > 100


def test_small_corpus_still_gets_validation_documents(tmp_path):
    import random

    from tests.conftest import make_document

    src = tmp_path / "s"
    src.mkdir()
    r = random.Random(2)
    for i in range(6):
        (src / f"{i}.txt").write_text(make_document(r, 8))
    out = build_corpus([str(src)], tmp_path / "o", CorpusConfig(val_fraction=0.001, min_val_docs=2))
    assert len(_texts(out, "val")) == 2 and len(_texts(out, "train")) == 4
    none = build_corpus([str(src)], tmp_path / "o2", CorpusConfig(val_fraction=0.0))
    assert len(_texts(none, "val")) == 0 and len(_texts(none, "train")) == 6
