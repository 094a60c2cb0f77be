"""`pocketlm eval`: --task prints a report (text or JSON) and writes --out; exactly one of
--tokens / --task; the --tokens mode still works."""

from __future__ import annotations

import json

import pytest

from pocketlm.cli.main import main


@pytest.fixture
def task_file(tmp_path):
    records = [
        {"question": "The little dog", "choices": ["ran", "sky"], "answer": 0},
        {"question": "The cat said", "choices": ["hello", "moon"], "answer": "hello"},
    ]
    path = tmp_path / "quiz.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_task_report_as_text_json_and_artifact(tiny_model_dir, task_file, tmp_path, capsys):
    assert main(["eval", "--model", str(tiny_model_dir), "--task", str(task_file)]) == 0
    text = capsys.readouterr().out
    assert "quiz (choice, 2 items): acc " in text and "acc_norm" in text
    out = tmp_path / "report"
    args = ["eval", "--model", str(tiny_model_dir), "--task", str(task_file), "--json"]
    assert main([*args, "--backend", "torch", "--out", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["backend"] == "torch" and report["tasks"]["quiz"]["items"] == 2
    assert (out / "report.json").is_file() and (out / "report.md").is_file()


def test_exactly_one_of_tokens_or_task(tiny_model_dir, task_file, synthetic_pipeline, capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--model", str(tiny_model_dir)])
    with pytest.raises(SystemExit):
        main(
            ["eval", "--model", str(tiny_model_dir), "--task", str(task_file),
             "--tokens", str(synthetic_pipeline["tokens"])]
        )  # fmt: skip
    capsys.readouterr()
    args = ["eval", "--model", str(tiny_model_dir), "--tokens", str(synthetic_pipeline["tokens"])]
    assert main([*args, "--json", "--max-tokens", "256"]) == 0
    assert json.loads(capsys.readouterr().out)["bpb"] > 0


def test_a_bad_task_file_names_its_line(tiny_model_dir, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "Q", "choices": ["a", "b"], "answer": 0}\n{"question": "Q"}\n')
    assert main(["eval", "--model", str(tiny_model_dir), "--task", str(bad)]) != 0
    assert "bad.jsonl, line 2" in capsys.readouterr().err
