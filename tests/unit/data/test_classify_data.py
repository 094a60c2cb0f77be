"""Labelled text for classification: every file type read the same way, string and integer labels,
bad rows located or counted (never dropped silently), the class order, a deterministic stratified
split and the class balance."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from pocketlm.common.errors import ConfigError, InputError
from pocketlm.data.classify_data import (
    LabelledExample,
    class_balance,
    label_name,
    label_names,
    read_labelled,
    split_labelled,
)

ROWS = [
    {"text": 'A fine, "quoted" film\nover two lines.', "label": "positive", "id": 1},
    {"text": "Dull.", "label": "negative", "id": 2},
    {"text": "Neither here nor there.", "label": "neutral", "id": 3},
    {"text": "Loved it", "label": "positive", "id": 4},
]


def _write(root: Path, rows: list[dict], stem: str = "data") -> dict[str, Path]:
    """The rows as jsonl, a json array, json lines, csv, tsv, parquet and a datasets folder."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    datasets = pytest.importorskip("datasets")
    root.mkdir(parents=True, exist_ok=True)
    out = {
        "jsonl": root / f"{stem}.jsonl",
        "json": root / f"{stem}.json",
        "json-lines": root / f"{stem}-lines.json",
        "csv": root / f"{stem}.csv",
        "tsv": root / f"{stem}.tsv",
        "parquet": root / f"{stem}.parquet",
        "datasets": root / f"{stem}_dataset",
    }
    out["jsonl"].write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out["json"].write_text(json.dumps(rows, indent=2), encoding="utf-8")
    out["json-lines"].write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    for kind, delimiter in (("csv", ","), ("tsv", "\t")):
        with out[kind].open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]), delimiter=delimiter)
            writer.writeheader()
            writer.writerows(rows)
    pq.write_table(pa.Table.from_pylist(rows), out["parquet"])
    datasets.Dataset.from_list(rows).save_to_disk(str(out["datasets"]))
    return out


def test_every_file_type_reads_the_same_examples(tmp_path):
    files = _write(tmp_path, ROWS)
    expected = [(r["text"], r["label"]) for r in ROWS]
    for name, path in files.items():
        got = read_labelled(path)
        assert [(e.text, e.label) for e in got.examples] == expected, name
        assert got.skipped == 0 and got.report["records"] == {"in": 4, "kept": 4, "dropped": {}}
        assert got.report["labels"] == {"negative": 1, "neutral": 1, "positive": 2}
    assert read_labelled(files["jsonl"]).examples[1].source == f"{files['jsonl']}:2"
    assert read_labelled(files["csv"]).examples[1].source == f"{files['csv']}:4"  # 2-line row
    assert read_labelled(files["parquet"]).examples[0].source == f"{files['parquet']}#row=1"
    both = read_labelled([files["csv"], files["parquet"]])  # several files, in order
    assert [e.label for e in both.examples] == [r["label"] for r in ROWS] * 2


def test_a_folder_reads_each_file_once(tmp_path):
    files = _write(tmp_path / "all", ROWS)
    folder = tmp_path / "folder"
    folder.mkdir()
    for name in ("jsonl", "tsv", "datasets"):
        files[name].rename(folder / files[name].name)
    (folder / "notes.txt").write_text("not data", encoding="utf-8")
    got = read_labelled(folder)
    assert len(got.examples) == 12 and got.report["files"]["skipped"] == 1
    assert got.report["named_files"][-1]["reason"] == "unsupported type .txt"


def test_integer_and_custom_columns(tmp_path):
    rows = [
        {"review": "great", "stars": 2},
        {"review": "bad", "stars": 0},
        {"review": "ok", "stars": 1},
        {"review": "good", "stars": 10},
    ]
    files = _write(tmp_path, rows)
    for name, path in files.items():
        got = read_labelled(path, text_column="review", label_column="stars")
        assert [e.label for e in got.examples] == ["2", "0", "1", "10"], name  # csv: text "2"
        assert label_names(got) == ("0", "1", "2", "10")  # numeric, not text, order
    mixed = [LabelledExample("x", x, "f:1") for x in ("b", "10", "a", "-1", "2")]
    assert label_names(mixed) == ("-1", "2", "10", "a", "b")


@pytest.mark.parametrize(
    "value,name",
    [
        ("pos", "pos"),
        (" pos ", "pos"),
        (3, "3"),
        ("03", "3"),
        ("+1", "1"),
        ("-2", "-2"),
        (1.0, "1"),
        (np.int64(3), "3"),
        (np.float32(2.0), "2"),
    ],
)
def test_label_names_are_canonical(value, name):
    assert label_name(value) == name


def test_a_missing_column_names_the_file_and_its_columns(tmp_path):
    rows = [{"sentence": "fine", "label": "pos"}, {"sentence": "poor", "label": "neg"}]
    files = _write(tmp_path, rows)
    with pytest.raises(InputError) as err:
        read_labelled(files["csv"])
    message = str(err.value)
    assert f"{files['csv']}, line 2" in message
    assert "no text column 'text' (columns: sentence, label)" in message
    assert "may be in 'sentence'" in message
    with pytest.raises(InputError, match=r"data.parquet#row=1: no label column 'y' \(columns"):
        read_labelled(files["parquet"], text_column="sentence", label_column="y")
    got = read_labelled(files["jsonl"], text_column="sentence")
    assert [e.text for e in got.examples] == ["fine", "poor"]


BAD_LINES = [
    json.dumps({"text": "good one", "label": "pos"}),
    json.dumps({"label": "pos"}),  # no text
    json.dumps({"text": "   ", "label": "neg"}),  # empty text
    json.dumps({"text": 42, "label": "neg"}),  # not text
    json.dumps({"text": "no label"}),
    json.dumps({"text": "null label", "label": None}),
    json.dumps({"text": "empty label", "label": ""}),
    json.dumps({"text": "float label", "label": 0.5}),
    json.dumps({"text": "list label", "label": ["a"]}),
    json.dumps({"text": "bool label", "label": True}),
    '{"text": "broken',
    json.dumps(["not", "a", "record"]),
    json.dumps({"text": "bad one", "label": "neg"}),
]
BAD_KINDS = {
    "missing_text": 1,
    "empty_text": 1,
    "text_not_string": 1,
    "missing_label": 3,
    "invalid_label": 3,
    "invalid_json": 1,
    "not_a_record": 1,
}


@pytest.mark.parametrize(
    "line,words",
    [
        (2, "no text column 'text' (columns: label)"),
        (3, "'text' is empty"),
        (4, "'text' is int, not text"),
        (5, "no label column 'label' (columns: text)"),
        (6, "'label' is null"),
        (7, "'label' is empty"),
        (8, "'label' is 0.5: a label is a name or an integer"),
        (9, "'label' is list"),
        (10, "'label' is a boolean"),
        (11, "invalid JSON"),
        (12, "a record is an object, not list"),
    ],
)
def test_each_bad_row_stops_the_reading_naming_file_and_line(tmp_path, line, words):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join([BAD_LINES[0], BAD_LINES[line - 1]]) + "\n", encoding="utf-8")
    with pytest.raises(InputError) as err:
        read_labelled(path)
    assert f"{path}, line 2, byte offset " in str(err.value)
    assert words in str(err.value)


def test_bad_rows_are_counted_and_skipped_never_silently(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(BAD_LINES) + "\n", encoding="utf-8")
    got = read_labelled(path, on_bad="skip")
    assert [(e.text, e.label) for e in got.examples] == [("good one", "pos"), ("bad one", "neg")]
    assert got.skipped == 11 and got.report["bad_records"]["counts"] == BAD_KINDS
    records = got.report["records"]
    assert records["in"] == 13 and records["kept"] == 2
    assert records["in"] == records["kept"] + sum(records["dropped"].values())
    assert f"{path}, line 4" in got.report["bad_records"]["examples"][2]
    assert got.report["named_files"][0]["status"] == "partial"


def test_bad_csv_rows_in_both_policies(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("text,label\nfine,1\n,0\nshort row\nok,\ngood,0\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"bad.csv, line 3, byte offset 18: 'text' is empty"):
        read_labelled(path)
    got = read_labelled(path, on_bad="skip")
    assert [(e.text, e.label, e.source) for e in got.examples] == [
        ("fine", "1", f"{path}:2"),
        ("good", "0", f"{path}:6"),
    ]
    assert got.report["bad_records"]["counts"] == {
        "empty_text": 1,
        "invalid_csv": 1,
        "missing_label": 1,
    }


def test_nothing_left_or_nothing_there_is_an_error(tmp_path):
    path = tmp_path / "all-bad.jsonl"
    path.write_text(json.dumps({"text": "x"}) + "\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"no labelled examples: 1 records read, dropped: "):
        read_labelled(path, on_bad="skip")
    with pytest.raises(InputError, match="no such file or folder"):
        read_labelled(tmp_path / "nope.csv")
    with pytest.raises(InputError, match="no labelled data given"):
        read_labelled([])


def test_a_validation_label_missing_from_training_is_named(tmp_path):
    train = [LabelledExample("a", "pos", "t:1"), LabelledExample("b", "neg", "t:2")]
    val = [LabelledExample("c", "neg", "v.csv:2"), LabelledExample("d", "meh", "v.csv:3")]
    assert label_names(train, val[:1]) == ("neg", "pos")
    with pytest.raises(InputError, match=r"v.csv:3: label 'meh' is not in the training data"):
        label_names(train, val)
    with pytest.raises(InputError, match=r"at least 2 classes; the training data has 1 \(pos\)"):
        label_names(train[:1])


def _examples(counts: dict[str, int]) -> list[LabelledExample]:
    return [
        LabelledExample(f"{label} text {i}", label, f"f:{label}{i}")
        for label, n in counts.items()
        for i in range(n)
    ]


def test_the_split_is_stratified_deterministic_and_disjoint():
    examples = _examples({"a": 100, "b": 40, "c": 10, "d": 1})
    train, val = split_labelled(examples, 0.2, seed=0)
    assert Counter(e.label for e in val) == {"a": 20, "b": 8, "c": 2}  # each class its share
    assert Counter(e.label for e in train) == {"a": 80, "b": 32, "c": 8, "d": 1}  # d stays
    assert not {e.source for e in train} & {e.source for e in val}
    assert len(train) + len(val) == len(examples)
    assert train == [e for e in examples if e in train]  # input order kept
    again = split_labelled(list(reversed(examples)), 0.2, seed=0)[1]
    assert {e.source for e in again} == {e.source for e in val}  # by content, not by order
    other = split_labelled(examples, 0.2, seed=1)[1]
    assert {e.source for e in other} != {e.source for e in val}
    assert split_labelled(examples, 0.0, seed=0) == (examples, [])
    tiny = _examples({"a": 2, "b": 1})
    assert [e.label for e in split_labelled(tiny, 0.1, seed=0)[1]] == ["a"]  # one held out
    with pytest.raises(ConfigError):
        split_labelled(examples, 1.0, seed=0)


def test_class_balance_counts_shares_and_warns():
    even = class_balance(_examples({"a": 30, "b": 10}), ("a", "b"))
    assert even["counts"] == {"a": 30, "b": 10} and even["shares"] == {"a": 0.75, "b": 0.25}
    assert even["imbalance_ratio"] == 3.0 and even["warning"] is None  # 3 is not over 3
    skewed = class_balance(_examples({"a": 5, "b": 40, "c": 10}), ("a", "b", "c"))
    assert skewed["imbalance_ratio"] == 8.0 and skewed["total"] == 55
    assert "'b' has 40 examples (73%), 'a' 5 (9%), 8.0x" in skewed["warning"]
    missing = class_balance(_examples({"a": 5}), ("a", "b"))
    assert missing["imbalance_ratio"] is None and "no examples of 'b'" in missing["warning"]
    with pytest.raises(InputError, match="not among the classes"):
        class_balance(_examples({"z": 1}), ("a", "b"))
