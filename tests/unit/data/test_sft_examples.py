"""Fine-tuning records: every format normalised to messages, every file type read the same way,
bad records located or counted (never dropped silently), a seeded validation split."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pytest

from pocketlm.common.errors import InputError
from pocketlm.data.accounting import Accounting
from pocketlm.data.records import BadRecordLog
from pocketlm.data.sft_examples import SFTDataConfig, load_sft_data, read_examples, split_examples
from pocketlm.data.sft_formats import RecordProblem, to_messages
from pocketlm.data.source_options import SourceOptions
from pocketlm.tokenizer.tokenizer import Tokenizer

SYS = {"role": "system", "content": "Be brief."}
USER = {"role": "user", "content": "What is a cat?"}
REPLY = {"role": "assistant", "content": "A small animal."}

# The same conversation in each format: (format name, record)
RECORDS = [
    ("chat", {"messages": [SYS, USER, REPLY]}),
    (
        "sharegpt",
        {
            "conversations": [
                {"from": "system", "value": "Be brief."},
                {"from": "human", "value": "What is a cat?"},
                {"from": "gpt", "value": "A small animal."},
            ]
        },
    ),
    (
        "prompt_completion",
        {"system": "Be brief.", "prompt": "What is a cat?", "completion": "A small animal."},
    ),
    (
        "prompt_completion",
        {"prompt": [SYS, USER], "completion": [REPLY]},  # TRL's conversational style
    ),
    (
        "alpaca",
        {
            "system": "Be brief.",
            "instruction": "What is a cat?",
            "input": "",
            "output": "A small animal.",
        },
    ),
]


@pytest.fixture(scope="module")
def tok(synthetic_pipeline) -> Tokenizer:
    return Tokenizer.load(synthetic_pipeline["tokenizer"])


@pytest.mark.parametrize(
    "kind,record", RECORDS, ids=[f"{k}-{i}" for i, (k, _) in enumerate(RECORDS)]
)
def test_every_format_becomes_the_same_messages(kind, record):
    assert to_messages(record) == (kind, [SYS, USER, REPLY])


def test_format_details():
    alpaca = {"instruction": "Translate.", "input": "chat", "output": "cat"}
    assert to_messages(alpaca)[1] == [
        {"role": "user", "content": "Translate.\n\nchat"},
        {"role": "assistant", "content": "cat"},
    ]
    parts = {
        "messages": [
            {
                "role": "user",
                "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            },
            REPLY,
        ]
    }
    assert to_messages(parts)[1][0] == {"role": "user", "content": "ab"}
    extra_keys = {"messages": [{**USER, "name": "x"}, {**REPLY, "weight": 1}], "id": 7}
    assert to_messages(extra_keys)[1] == [USER, REPLY]
    as_json_text = {"messages": json.dumps([USER, REPLY])}  # a CSV column
    assert to_messages(as_json_text)[1] == [USER, REPLY]
    sharegpt_roles = {
        "conversations": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    }
    assert to_messages(sharegpt_roles)[0] == "sharegpt"


@pytest.mark.parametrize(
    "record,kind,words",
    [
        (
            {"text": "x", "id": 1},
            "unknown_format",
            ["fields (id, text)", "messages (chat)", "Alpaca"],
        ),
        ({"prompt": "x"}, "unknown_format", ["fields (prompt)"]),
        ({"messages": [USER]}, "no_assistant_turn", ["no assistant turn"]),
        ({"messages": []}, "wrong_type", ["'messages' must be a non-empty list"]),
        (
            {"messages": [USER, {"role": "tool", "content": "x"}]},
            "unknown_role",
            ["'messages[1].role' is 'tool'"],
        ),
        (
            {"messages": [USER, {"role": "assistant"}]},
            "missing_field",
            ["'messages[1]' needs 'role' and 'content' (it has: role)"],
        ),
        (
            {"messages": [USER, {"role": "assistant", "content": 3}]},
            "wrong_type",
            ["'messages[1].content' is int"],
        ),
        (
            {"conversations": [{"from": "bot", "value": "x"}]},
            "unknown_role",
            ["'conversations[0].from' is 'bot'", "human"],
        ),
        ({"instruction": "x", "output": None}, "wrong_type", ["'output' is null"]),
        ({"messages": "[not json"}, "invalid_json", ["'messages' is text but not a JSON list"]),
        (["a", "list"], "unknown_format", ["not list"]),
    ],
)
def test_bad_records_name_the_field(record, kind, words):
    with pytest.raises(RecordProblem) as err:
        to_messages(record)
    assert err.value.kind == kind
    for w in words:
        assert w in err.value.reason


def _write_all_types(root: Path, records: list[dict]) -> dict[str, Path]:
    """The records as jsonl, a json array, json lines, csv (list fields as JSON text), parquet
    and a datasets folder."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    datasets = pytest.importorskip("datasets")
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    out["jsonl"] = root / "a.jsonl"
    out["jsonl"].write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    out["json"] = root / "b.json"
    out["json"].write_text(json.dumps(records, indent=2), encoding="utf-8")
    out["json-lines"] = root / "c.json"
    out["json-lines"].write_text("\n".join(json.dumps(r) for r in records), encoding="utf-8")
    out["csv"] = root / "d.csv"
    with out["csv"].open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["messages"])
        writer.writeheader()
        for r in records:
            writer.writerow({"messages": json.dumps(r["messages"])})
    out["parquet"] = root / "e.parquet"
    pq.write_table(pa.Table.from_pylist(records), out["parquet"])
    out["datasets"] = root / "f_dataset"
    datasets.Dataset.from_list(records).save_to_disk(str(out["datasets"]))
    return out


def _conversation(i: int) -> dict:
    return {
        "messages": [
            {"role": "user", "content": f'Question {i}?\nwith a newline, "quotes"'},
            {"role": "assistant", "content": f"Answer {i}."},
        ]
    }


def test_every_file_type_reads_the_same_records(tmp_path):
    records = [_conversation(i) for i in range(5)]
    files = _write_all_types(tmp_path / "data", records)
    expected = [to_messages(r)[1] for r in records]
    for name, path in files.items():
        book = Accounting(BadRecordLog(), lambda n: None)
        examples = list(read_examples([str(path)], SourceOptions(), book, Counter()))
        assert [e.messages for e in examples] == expected, name
    # a folder: each file of a known type once, in sorted order, a datasets folder inside as
    # one dataset, other files skipped and named
    book = Accounting(BadRecordLog(), lambda n: None)
    folder = tmp_path / "folder"
    folder.mkdir()
    for name in ("jsonl", "csv", "datasets"):
        files[name].rename(folder / files[name].name)
    (folder / "notes.txt").write_text("ignored", encoding="utf-8")
    examples = list(read_examples([str(folder)], SourceOptions(), book, Counter()))
    assert [e.messages for e in examples] == expected * 3
    assert examples[0].origin.endswith("a.jsonl:1") and "f_dataset#row=1" in examples[10].origin
    assert book.summary()["files"]["skipped"] == 1 and book.open_files == 3  # to settle


def test_json_array_records_have_line_numbers(tmp_path, tok):
    path = tmp_path / "data.json"
    path.write_text(json.dumps([_conversation(0), {"text": "x"}], indent=2), encoding="utf-8")
    with pytest.raises(
        InputError,
        match=r"data.json, line \d+, byte offset \d+: no fine-tuning format matches the fields \(text\)",
    ) as err:
        load_sft_data([str(path)], tok, SFTDataConfig(), 64)
    line = int(str(err.value).split("line ")[1].split(",")[0])
    assert path.read_text().splitlines()[line - 1].strip() == "{"
    assert "--on-bad-record skip" in str(err.value)


def test_bad_records_stop_with_file_line_and_field_or_are_counted(tmp_path, tok):
    path = tmp_path / "mixed.jsonl"
    lines = [
        json.dumps(_conversation(0)),
        '{"messages": [broken',
        json.dumps({"messages": [USER, {"role": "robot", "content": "x"}]}),
        "",
        json.dumps({"question": "x", "answer": "y"}),
        json.dumps(_conversation(1)),
        json.dumps({"messages": [USER]}),
        json.dumps(_conversation(2)),
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(
        InputError, match=r"mixed.jsonl, line 2, byte offset \d+: truncated JSON line"
    ):
        load_sft_data([str(path)], tok, SFTDataConfig(), 256)
    path.write_text("\n".join(lines[:1] + lines[2:]) + "\n", encoding="utf-8")
    with pytest.raises(
        InputError, match=r"mixed.jsonl, line 2, byte offset \d+: 'messages\[1\].role' is 'robot'"
    ):
        load_sft_data([str(path)], tok, SFTDataConfig(), 256)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    data = load_sft_data([str(path)], tok, SFTDataConfig(on_bad_record="skip", val_fraction=0), 256)
    report = data.report
    assert report["bad_records"]["counts"] == {
        "invalid_json": 1,
        "unknown_role": 1,
        "unknown_format": 1,
        "no_assistant_turn": 1,
    }
    assert any(
        "line 5" in e and "(answer, question)" in e for e in report["bad_records"]["examples"]
    )
    records = report["records"]
    assert records["in"] == 7 and records["kept"] == 3 == len(data.train)
    assert records["in"] == records["kept"] + sum(records["dropped"].values())  # nothing silent
    assert report["formats"] == {"chat": 3}


def test_a_template_refusal_is_a_located_bad_record(tmp_path):
    from tests.unit.tokenizer.hf_folders import write_folder

    gemma = Tokenizer.load(write_folder("gemma2", tmp_path / "gemma2"))  # refuses system turns
    path = tmp_path / "system.jsonl"
    lines = [_conversation(0), {"messages": [SYS, USER, REPLY]}]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
    with pytest.raises(InputError, match=r"system.jsonl, line 2, .*System role not supported"):
        load_sft_data([str(path)], gemma, SFTDataConfig(val_fraction=0), 256)
    config = SFTDataConfig(val_fraction=0, on_bad_record="skip")
    data = load_sft_data([str(path)], gemma, config, 256)
    assert data.report["bad_records"]["counts"] == {"template_refused": 1}
    assert len(data.train) == 1


def test_too_long_examples_are_dropped_or_truncated_and_counted(tmp_path, tok):
    path = tmp_path / "long.jsonl"
    long_reply = {"messages": [USER, {"role": "assistant", "content": "word " * 200}]}
    path.write_text(
        json.dumps(_conversation(0)) + "\n" + json.dumps(long_reply) + "\n", encoding="utf-8"
    )
    dropped = load_sft_data([str(path)], tok, SFTDataConfig(val_fraction=0), 64)
    assert len(dropped.train) == 1
    assert dropped.report["too_long"] == {
        "policy": "drop",
        "max_tokens": 64,
        "dropped": 1,
        "truncated": 0,
        "examples": [
            f"{path}, line 2, byte offset {len(path.read_text().splitlines()[0]) + 1}: "
            f"{len(tok.encode_chat(long_reply['messages'], False))} tokens, over the 64 "
            "the context holds: dropped"
        ],
    }
    assert dropped.report["records"]["dropped"] == {"too_long": 1}
    cut = load_sft_data([str(path)], tok, SFTDataConfig(val_fraction=0, too_long="truncate"), 64)
    assert len(cut.train) == 2 and max(len(t.ids) for t in cut.train) == 64
    assert cut.report["too_long"]["truncated"] == 1 and cut.report["records"]["kept"] == 2


def test_validation_split_is_seeded_by_content_and_never_empty(tmp_path, tok):
    records = [_conversation(i) for i in range(200)]
    book = Accounting(BadRecordLog(), lambda n: None)
    path = tmp_path / "many.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    examples = list(read_examples([str(path)], SourceOptions(), book, Counter()))
    train, val = split_examples(examples, 0.1, seed=0)
    assert 8 <= len(val) <= 35 and len(train) + len(val) == 200
    again = split_examples(list(reversed(examples)), 0.1, seed=0)[1]
    assert {e.origin for e in again} == {e.origin for e in val}  # by content, not by order
    other = split_examples(examples, 0.1, seed=1)[1]
    assert {e.origin for e in other} != {e.origin for e in val}
    assert len(split_examples(examples[:2], 0.01, seed=0)[1]) == 1  # at least one held out
    assert split_examples(examples, 0.0, seed=0)[1] == []


def test_validation_file(tmp_path, tok):
    train_path, val_path = tmp_path / "train.jsonl", tmp_path / "val.csv"
    train_path.write_text(
        "".join(json.dumps(_conversation(i)) + "\n" for i in range(6)), encoding="utf-8"
    )
    with val_path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["instruction", "input", "output"])
        writer.writeheader()
        writer.writerow({"instruction": "Say hi", "input": "", "output": "hi"})
    data = load_sft_data([str(train_path)], tok, SFTDataConfig(), 256, val_specs=[str(val_path)])
    assert data.report["examples"] == {"train": 6, "val": 1}
    assert data.report["formats"] == {"chat": 6, "alpaca": 1}
    assert data.report["validation"] == {"files": [str(val_path)]}


def test_missing_or_unsupported_files_fail_early(tmp_path, tok):
    with pytest.raises(InputError, match="no such file or folder"):
        load_sft_data([str(tmp_path / "nope.jsonl")], tok, SFTDataConfig(), 64)
    (tmp_path / "a.txt").write_text("x", encoding="utf-8")
    with pytest.raises(InputError, match="unsupported file type .txt"):
        load_sft_data([str(tmp_path / "a.txt")], tok, SFTDataConfig(), 64)
