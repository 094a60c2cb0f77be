"""The cloze task from plain text: questions cut inside lines, the right next words among
distinct runs of other lines, seeded, readable as a task file."""

from __future__ import annotations

import json

import pytest

from pocketlm.evals.cloze_task import cloze_records

TEXTS = [
    "def add(a, b):\n    return a + b plus nothing else\n\nclass Point:\n    x = 1 and y = 2\n",
    "Once upon a time there was a little dog.\nIt ran to the park every day.\n"
    "The cat sat on the warm mat.\nBirds sang in the tall green trees.\n",
]


def test_records_ask_for_the_next_words_of_a_line():
    records = cloze_records(TEXTS, items=50, choices=4, words=2, seed=3)
    assert len(records) == 7  # one item per line of at least three words
    for r in records:
        gold = r["choices"][r["answer"]]
        assert len(r["choices"]) == 4 and len(set(r["choices"])) == 4
        assert all(len(c.split()) == 2 for c in r["choices"])
        # the question continued by a space and the right words is the original text
        assert any(r["question"] + " " + gold in t for t in TEXTS)  # the text, continued
        assert not r["question"].endswith(" ")
    assert cloze_records(TEXTS, items=50, choices=4, words=2, seed=3) == records  # seeded
    assert cloze_records(TEXTS, items=50, choices=4, words=2, seed=4) != records


def test_the_right_answer_moves_and_context_is_bounded():
    text = "\n".join(f"line {i} has words alpha{i} beta{i} gamma{i} delta{i}" for i in range(60))
    records = cloze_records([text], items=40, choices=3, words=1, context_chars=50, seed=0)
    assert len(records) == 40
    assert len({r["answer"] for r in records}) == 3
    assert all(len(r["question"]) <= 50 for r in records)


def test_too_little_text_gives_no_items_and_bad_settings_raise():
    assert cloze_records(["one two three"], items=5) == []
    assert cloze_records([], items=5) == []
    with pytest.raises(ValueError):
        cloze_records(TEXTS, choices=1)


def test_records_read_back_as_a_choice_task(tmp_path):
    from pocketlm.evals.task_files import read_task

    path = tmp_path / "cloze.jsonl"
    records = cloze_records(TEXTS, items=4, choices=3, words=2, seed=1)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    task = read_task(path)
    assert task.kind == "choice" and len(task.items) == len(records)
    assert [it.gold for it in task.items] == [r["answer"] for r in records]


def test_a_long_line_gives_several_items():
    words = [f"w{i}" for i in range(80)]
    records = cloze_records([" ".join(words)], items=10, choices=3, words=2, line_words=16, seed=0)
    assert len(records) == 5  # five pieces of 16 words
    for r in records:
        assert r["question"] + " " + r["choices"][r["answer"]] in " ".join(words)
