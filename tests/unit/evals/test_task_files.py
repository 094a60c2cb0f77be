"""Task files: the kind read from the fields, answers as index or text, CSV's JSON cells, and
errors that name the file, the line and the field."""

from __future__ import annotations

import json

import pytest

from pocketlm.common.errors import InputError
from pocketlm.evals.task_files import ChoiceItem, ClassifyItem, GenerateItem, read_task
from pocketlm.evals.task_prompts import build_prompt


def _jsonl(path, records) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


def test_kinds_are_read_from_the_fields(tmp_path):
    choice = read_task(
        _jsonl(
            tmp_path / "mc.jsonl",
            [
                {"question": "Q1", "choices": ["a", "b", "c"], "answer": 2},
                {"question": "Q2", "choices": ["x", "y"], "answer": "x"},
            ],
        )
    )
    assert choice.kind == "choice" and choice.name == "mc"
    assert choice.items[0] == ChoiceItem("Q1", ("a", "b", "c"), 2, f"{tmp_path}/mc.jsonl:1")
    assert choice.items[1].gold == 0
    gen = read_task(
        _jsonl(tmp_path / "g.jsonl", [{"prompt": "2+2=", "answer": ["4", "four"], "stop": "\n"}])
    )
    assert gen.items[0] == GenerateItem("2+2=", ("4", "four"), ("\n",), None, gen.items[0].where)
    cls = read_task(
        _jsonl(
            tmp_path / "c.jsonl",
            [{"text": "good", "label": "pos"}, {"text": "bad", "label": "neg"}],
        )
    )
    assert cls.kind == "classify" and cls.labels == ("pos", "neg")
    assert cls.items[1] == ClassifyItem("bad", "neg", cls.items[1].where)


def test_csv_cells_may_hold_json_lists(tmp_path):
    path = tmp_path / "mc.csv"
    path.write_text(
        'question,choices,answer\n"The sky is","[""blue"", ""green""]",blue\nQ2,"[""1"", ""2""]",1\n',
        encoding="utf-8",
    )
    task = read_task(path)
    assert task.items[0].choices == ("blue", "green") and task.items[0].gold == 0
    assert task.items[1].gold == 0  # "1" is a choice's text before it is an index
    assert task.items[1].where.endswith("mc.csv:3")


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_a_byte_order_mark_is_not_part_of_the_first_field(tmp_path, suffix):
    """Excel and Notepad write UTF-8 with a BOM: the first column is still 'question'."""
    path = tmp_path / f"bom{suffix}"
    text = (
        'question,choices,answer\nQ,"[""a"", ""b""]",a\n'
        if suffix == ".csv"
        else json.dumps({"question": "Q", "choices": ["a", "b"], "answer": "a"}) + "\n"
    )
    path.write_text(text, encoding="utf-8-sig")
    assert read_task(path).items[0].choices == ("a", "b")


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"question": "Q", "choices": ["a", "b"], "answer": 5}, "'answer' index 5 is outside 0..1"),
        ({"question": "Q", "choices": ["a", "b"], "answer": "c"}, "'answer' 'c' is none of"),
        ({"question": "Q", "choices": ["a"], "answer": 0}, "'choices' needs at least 2"),
        ({"question": "", "choices": ["a", "b"], "answer": 0}, "'question' must be a non-empty"),
        ({"choices": ["a", "b"], "answer": 0}, "'question' is missing"),
        ({"question": "Q", "choices": ["a", "b"]}, "'answer' is missing"),
    ],
)
def test_bad_records_name_file_line_and_field(tmp_path, record, message):
    good = {"question": "Q0", "choices": ["a", "b"], "answer": 0}
    path = _jsonl(tmp_path / "t.jsonl", [good, record])
    with pytest.raises(InputError, match="t.jsonl, line 2") as info:
        read_task(path)
    assert message in str(info.value)


def test_broken_json_and_unknown_fields(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"prompt": "a", "answer": "b"}\n\n{"prompt": \n', encoding="utf-8")
    with pytest.raises(InputError, match="line 3: not valid JSON"):
        read_task(path)
    _jsonl(path, [{"foo": 1}])
    with pytest.raises(InputError, match="cannot tell the task type"):
        read_task(path)
    (tmp_path / "x.txt").write_text("a", encoding="utf-8")
    with pytest.raises(InputError, match="unsupported task file type"):
        read_task(tmp_path / "x.txt")
    gen = _jsonl(tmp_path / "g.jsonl", [{"prompt": "a", "answer": "b", "regex": "("}])
    with pytest.raises(InputError, match="'regex' is not a valid pattern"):
        read_task(gen)


def test_few_shot_prompts_are_seeded_and_never_show_the_item(tmp_path):
    records = [{"question": f"Q{i}", "choices": ["a", "b"], "answer": i % 2} for i in range(6)]
    task = read_task(_jsonl(tmp_path / "t.jsonl", records))
    zero = build_prompt(task, 0)
    assert zero.context == "Q0" and zero.continuations == (" a", " b") and zero.gold == 0
    three = build_prompt(task, 2, shots=3, seed=5)
    assert three == build_prompt(task, 2, shots=3, seed=5)
    parts = three.context.split("\n\n")
    assert len(parts) == 4 and parts[-1] == "Q2" and all("Q2" not in p for p in parts[:-1])
    q = int(parts[0].split()[0][1:])
    assert parts[0] == f"Q{q} {'ab'[q % 2]}"  # an example is solved with its right answer
    assert {build_prompt(task, 2, shots=3, seed=s).context for s in range(8)} != {three.context}
