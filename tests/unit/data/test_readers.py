"""Every bad input gets a message naming file, line and byte offset; --on-bad-record skip counts it."""

from __future__ import annotations

import json

import pytest

from pocketlm.common.errors import InputError
from pocketlm.data.accounting import Accounting
from pocketlm.data.csv_reader import read_csv
from pocketlm.data.readers import read_jsonl, read_parquet, read_text_file
from pocketlm.data.records import BadRecordLog
from pocketlm.data.source_options import SourceOptions
from pocketlm.data.sources import iter_source


def _book(policy="error"):
    return Accounting(BadRecordLog(policy=policy), lambda n: None)


def _read(fn, path, policy="error", **opts):
    book = _book(policy)
    docs = list(fn(path, SourceOptions(**opts), book.open(path, "src")))
    return docs, book.bad_log


def test_invalid_utf8_names_file_line_and_offset(tmp_path):
    p = tmp_path / "latin.txt"
    p.write_bytes(b"first line\nsecond caf\xe9 line\n")
    with pytest.raises(InputError) as err:
        _read(read_text_file, p)
    msg = str(err.value)
    assert (
        "latin.txt" in msg
        and "line 2" in msg
        and "byte offset 21" in msg
        and "not valid UTF-8" in msg
    )
    assert "--on-bad-record skip" in msg


def test_invalid_utf8_in_line_mode_skips_only_that_line(tmp_path):
    p = tmp_path / "lines.txt"
    p.write_bytes(b"good one\nbad \xff\ngood two\n")
    docs, bad = _read(read_text_file, p, policy="skip", text_unit="line")
    assert [d.text for d in docs] == ["good one", "good two"]
    assert bad.counts == {"invalid_utf8": 1} and "line 2" in bad.examples[0]


def test_truncated_jsonl_line(tmp_path):
    p = tmp_path / "data.jsonl"
    p.write_bytes(b'{"text": "one"}\n{"text": "two"}\n{"text": "thr')
    with pytest.raises(InputError) as err:
        _read(read_jsonl, p)
    msg = str(err.value)
    assert (
        "data.jsonl" in msg
        and "line 3" in msg
        and "byte offset" in msg
        and "truncated JSON line" in msg
    )
    docs, bad = _read(read_jsonl, p, policy="skip")
    assert [d.text for d in docs] == ["one", "two"] and bad.counts == {"invalid_json": 1}


def test_jsonl_missing_field_lists_available_fields(tmp_path):
    p = tmp_path / "data.jsonl"
    p.write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(
        InputError,
        match=r"data.jsonl, line 1, byte offset 0: missing field 'text' \(the record has: body\)",
    ):
        _read(read_jsonl, p)
    docs, _ = _read(read_jsonl, p, text_field="body")
    assert docs[0].text == "x" and docs[0].origin.endswith("data.jsonl:1")


def test_jsonl_nested_field(tmp_path):
    p = tmp_path / "data.jsonl"
    p.write_text(json.dumps({"meta": {"content": "deep"}}) + "\n")
    docs, _ = _read(read_jsonl, p, text_field="meta.content")
    assert docs[0].text == "deep"


def test_csv_missing_column_and_reading(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text('id,review\n1,"great, really"\n2,"multi\nline"\n', encoding="utf-8")
    with pytest.raises(
        InputError, match=r"t.csv, line 1, byte offset 0: no column 'text' \(columns: id, review\)"
    ):
        _read(read_csv, p)
    docs, _ = _read(read_csv, p, csv_column="review")
    assert [d.text for d in docs] == ["great, really", "multi\nline"]


def test_csv_bad_utf8_row(tmp_path):
    p = tmp_path / "t.csv"
    p.write_bytes(b"text\nfine\nbro\xc3ken\n")
    with pytest.raises(InputError, match=r"t.csv, line 3, byte offset 13: not valid UTF-8"):
        _read(read_csv, p)


def test_parquet_reads_and_reports_missing_column(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = tmp_path / "x.parquet"
    pq.write_table(pa.table({"content": ["a doc", None, "b doc"]}), p)
    with pytest.raises(InputError, match=r"no column 'text' \(columns: content\)"):
        _read(read_parquet, p)
    docs, bad = _read(read_parquet, p, policy="skip", text_field="content")
    assert [d.text for d in docs] == ["a doc", "b doc"] and bad.counts == {"missing_field": 1}


def test_hf_dataset_saved_on_disk(tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict({"text": ["alpha text", "beta text"]})}
    )
    ds.save_to_disk(str(tmp_path / "hfds"))
    docs = list(iter_source(str(tmp_path / "hfds"), SourceOptions(), _book()))
    assert [d.text for d in docs] == ["alpha text", "beta text"]
    with pytest.raises(InputError, match="no split 'test'"):
        list(
            iter_source(
                "hf:" + str(tmp_path / "hfds"),
                SourceOptions(hf_split="test"),
                _book(),
            )
        )


def test_missing_source_path():
    with pytest.raises(InputError, match="no such file or folder"):
        list(
            iter_source(
                "/nonexistent/folder",
                SourceOptions(),
                _book(),
            )
        )


def test_large_text_file_is_cut_at_line_boundaries(tmp_path):
    p = tmp_path / "big.txt"
    line = "x" * 99 + "\n"
    p.write_text(line * 50)  # 5000 bytes
    docs, _ = _read(read_text_file, p, max_doc_bytes=1024)
    assert all(len(d.text.encode()) <= 1024 for d in docs)
    assert "".join(d.text for d in docs) == line * 50


def test_paragraph_unit(tmp_path):
    p = tmp_path / "p.md"
    p.write_text("para one\nstill one\n\n\npara two\n")
    docs, _ = _read(read_text_file, p, text_unit="paragraph")
    assert [d.text for d in docs] == ["para one\nstill one\n", "para two\n"]
