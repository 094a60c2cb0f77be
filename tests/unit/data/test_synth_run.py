"""`synthesize` end to end against a fake teacher on 127.0.0.1: records finetune reads, prompts
and answers de-duplicated, top_logprobs kept, flaky requests retried on a fake clock, a killed
run continued without sending an answered prompt again (a cut line repaired), failures retried by
a re-run, seed topics asked once, changed settings refused, the key stored nowhere."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from pocketlm.common.errors import ArtifactError, ConfigError, InputError, PocketLMError
from pocketlm.common.manifest import read_manifest, verify_files
from pocketlm.data.sft_examples import SFTDataConfig, load_sft_data
from pocketlm.data.synth.config import SynthConfig
from pocketlm.data.synth.run import synthesize
from pocketlm.tokenizer.tokenizer import Tokenizer
from tests.unit.data.fake_teacher import FakeClock, FakeTeacher

PROMPTS = [f"Question number {i}: what is {i} plus {i}?" for i in range(12)]


class Killed(Exception):
    """Stands in for a kill: raised from the progress callback in the middle of a run."""


def _prompts(tmp_path: Path, lines=PROMPTS) -> str:
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _run(teacher, prompts, out, clock=None, **kw):
    options = {k: kw.pop(k) for k in ("overwrite", "on_progress", "api_key") if k in kw}
    config = SynthConfig(teacher_url=teacher.url, prompts=(prompts,), concurrency=2, **kw)
    return synthesize(config, out, clock=clock or FakeClock(), **options)


def _kill_after(n: int):
    def progress(phase, finished, total):
        if phase == "answers" and finished == n:
            raise Killed

    return progress


def test_records_are_chat_records_with_sparse_targets_that_finetune_reads(
    tmp_path, synthetic_pipeline
):
    same = "The same answer for both."
    answer = lambda text: same if "number 3" in text or "number 4" in text else f"Yes: {text}"  # noqa: E731
    lines = [*PROMPTS[:6], "QUESTION NUMBER 0:  what is 0 plus 0?"]  # a duplicate prompt
    with FakeTeacher(answer=answer) as teacher:
        result = _run(teacher, _prompts(tmp_path, lines), tmp_path / "out", top_logprobs=3)
        sent = teacher.texts()
        body = teacher.requests[0][0]
    out = result.path
    assert sorted(sent) == sorted(PROMPTS[:6])  # the duplicate prompt is never sent
    assert body["logprobs"] is True and body["top_logprobs"] == 3 and body["stream"] is False
    assert "model" not in body  # left to the server unless --model is given
    records = _records(out / "data.jsonl")
    assert len(records) == 5 and len({r["id"] for r in records}) == 5  # one duplicate answer
    first = records[0]
    assert [m["role"] for m in first["messages"]] == ["user", "assistant"]
    teacher_meta = first["teacher"]
    assert teacher_meta["model"] == "fake-teacher" and teacher_meta["finish_reason"] == "stop"
    tokens = first["messages"][1]["content"].split(" ")
    assert [t["token"] for t in teacher_meta["logprobs"]] == tokens
    assert all(
        len(t["top"]) == 3 and t["top"][0] == [t["token"], -0.5] for t in teacher_meta["logprobs"]
    )
    assert teacher_meta["usage"]["completion_tokens"] == len(tokens)

    manifest = read_manifest(out, kind="synth")
    verify_files(out)
    summary = manifest["summary"]
    assert summary["records"] == 5
    assert summary["prompts"] == {"unique": 6, "duplicates_dropped": 1}
    assert summary["this_run"]["answers"] == {"kept": 5, "duplicate_answer": 1}
    assert summary["this_run"]["http_requests"] == 6 and summary["this_run"]["retries"] == 0
    assert summary["this_run"]["completion_tokens"] > 0
    assert manifest["config"]["teacher_url"] == teacher.url
    assert manifest["parents"][0]["kind"] == "file"
    assert not list(tmp_path.glob(".out.*"))  # the staging directory became out

    tok = Tokenizer.load(synthetic_pipeline["tokenizer"])
    cfg = SFTDataConfig(val_fraction=0.0)
    for spec in (out / "data.jsonl", out):  # the file, or the whole output folder
        data = load_sft_data([str(spec)], tok, cfg, max_tokens=4096)
        assert data.report["examples"]["train"] == 5 and data.report["formats"] == {"chat": 5}


def test_flaky_requests_are_retried_without_real_sleeping(tmp_path):
    flaky = {0: ["429"], 1: ["500", "truncated"], 2: ["notjson"], 3: ["429-date", "500"]}

    def script(text, n):
        i = int(text.split()[2].rstrip(":"))
        steps = flaky.get(i, [])
        return steps[n - 1] if n <= len(steps) else "ok"

    clock = FakeClock()
    with FakeTeacher(script) as teacher:
        result = _run(teacher, _prompts(tmp_path), tmp_path / "out", clock=clock)
    t = result.summary["this_run"]
    assert t["records"] == 12 and t["failures"] == 0
    assert t["retries"] == 6 and t["http_requests"] == 18
    assert len(clock.sleeps) == 6 and 7.0 <= max(clock.sleeps) <= 7.7  # Retry-After: 7


def test_a_killed_run_continues_without_sending_answered_prompts_again(tmp_path):
    out = tmp_path / "out"
    staging = tmp_path / ".out.synth-partial"
    with FakeTeacher() as teacher:
        with pytest.raises(Killed):
            _run(teacher, _prompts(tmp_path), out, on_progress=_kill_after(5))
        assert not out.exists() and staging.is_dir()
        answered = {r["messages"][0]["content"] for r in _records(staging / "data.jsonl")}
        assert len(answered) == 5
        # the kill also cut a line in the middle of each file
        with open(staging / "data.jsonl", "ab") as fh:
            fh.write(b'{"id": "x", "messages": [{"role": "us')
        with open(staging / "requests.log", "ab") as fh:
            fh.write(b'{"kind": "answer", "id"')
        before = len(teacher.requests)
        result = _run(teacher, _prompts(tmp_path), out)
        again = teacher.texts()[before:]
    assert not answered & set(again)  # no answered prompt is sent twice
    records = _records(result.path / "data.jsonl")
    assert sorted(r["messages"][0]["content"] for r in records) == sorted(PROMPTS)  # each once
    assert result.summary["all_runs"]["runs"] == 2 and result.summary["records"] == 12
    assert result.summary["all_runs"]["answers"]["kept"] == 12
    assert not staging.exists()


def test_failures_are_sent_again_by_a_re_run_of_a_finished_output(tmp_path):
    out = tmp_path / "out"
    refused = PROMPTS[2]
    with FakeTeacher(lambda text, n: "400" if text == refused else "ok") as teacher:
        first = _run(teacher, _prompts(tmp_path), out)
        assert first.summary["this_run"]["failures"] == 1 and first.summary["records"] == 11
        log = [json.loads(line) for line in (out / "requests.log").read_text().splitlines()]
        failed = [e for e in log if e.get("outcome") == "failed"]
        assert len(failed) == 1 and "HTTP 400: scripted 400" in failed[0]["error"]
    with FakeTeacher() as teacher:  # the teacher is fixed; more prompts were added
        second = _run(teacher, _prompts(tmp_path, [*PROMPTS, "A new question?"]), out)
        assert sorted(teacher.texts()) == sorted([refused, "A new question?"])
    assert second.summary["records"] == 13 and second.summary["this_run"]["records"] == 2
    assert second.summary["all_runs"]["failures"] == 1  # history kept in the log
    verify_files(out)
    with FakeTeacher() as teacher:  # nothing left to do: nothing sent, the output stays whole
        third = _run(teacher, _prompts(tmp_path, [*PROMPTS, "A new question?"]), out)
        assert teacher.requests == [] and third.summary["records"] == 13


def test_truncated_and_empty_answers_are_dropped_counted_and_not_asked_again(tmp_path):
    out = tmp_path / "out"
    answer = lambda text: "" if "number 1:" in text else f"Sure. {text}"  # noqa: E731
    script = lambda text, n: "length" if "number 0:" in text else "ok"  # noqa: E731
    with FakeTeacher(script, answer=answer) as teacher:
        result = _run(teacher, _prompts(tmp_path, PROMPTS[:4]), out)
        answers = result.summary["this_run"]["answers"]
        assert answers == {"kept": 2, "truncated": 1, "empty": 1}
        _run(teacher, _prompts(tmp_path, PROMPTS[:4]), out)
        assert len(teacher.requests) == 4
    with FakeTeacher(script, answer=answer) as teacher:
        kept = _run(teacher, _prompts(tmp_path, PROMPTS[:4]), tmp_path / "k", keep_truncated=True)
        assert kept.summary["this_run"]["answers"]["kept"] == 3


def test_seed_topics_are_asked_once_then_answered(tmp_path):
    out = tmp_path / "out"
    config = SynthConfig(
        teacher_url="placeholder",
        seed_topics=("python lists", "unit conversion"),
        prompts_per_topic=3,
    )
    with FakeTeacher() as teacher:
        config = SynthConfig(**{**config.__dict__, "teacher_url": teacher.url})
        result = synthesize(config, out, clock=FakeClock())
        texts = teacher.texts()
        assert sum(t.startswith("Write 3 diverse requests") for t in texts) == 2
        assert len(texts) == 2 + 6
        synthesize(config, out, clock=FakeClock())
        assert len(teacher.requests) == 8  # neither the topics nor the answers again
    records = _records(out / "data.jsonl")
    assert len(records) == 6
    assert Counter(r["teacher"]["topic"] for r in records) == {
        "python lists": 3,
        "unit conversion": 3,
    }
    assert "Question 1 about python lists?" in {r["messages"][0]["content"] for r in records}
    assert result.summary["this_run"]["topics"] == {"ok": 2}


def test_a_re_run_with_other_settings_is_refused_unless_overwrite(tmp_path):
    out = tmp_path / "out"
    with FakeTeacher() as teacher:
        _run(teacher, _prompts(tmp_path, PROMPTS[:2]), out, temperature=0.7)
        with pytest.raises(ConfigError, match=r"temperature: 0.7 then, 0.2 now.*--overwrite"):
            _run(teacher, _prompts(tmp_path, PROMPTS[:2]), out, temperature=0.2)
        result = _run(
            teacher, _prompts(tmp_path, PROMPTS[:2]), out, temperature=0.2, overwrite=True
        )
        assert len(teacher.requests) == 4 and result.summary["all_runs"]["runs"] == 1


def test_an_output_that_is_not_a_synth_output_is_refused(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with FakeTeacher() as teacher, pytest.raises(ArtifactError, match="not a synth output"):
        _run(teacher, _prompts(tmp_path), out)
    assert (out / "notes.txt").read_text() == "mine"


def test_a_refused_key_stops_the_run_and_the_key_is_stored_nowhere(tmp_path):
    key = "sk-test-SECRET-4242"
    out = tmp_path / "out"
    with FakeTeacher(lambda text, n: "401") as teacher:
        with pytest.raises(ConfigError, match="HTTP 401.*check the API key") as info:
            _run(teacher, _prompts(tmp_path), out, api_key=key)
        assert len(teacher.requests) <= 2  # the run stops at the first refusal (2 in flight)
    assert key not in str(info.value)
    with FakeTeacher() as teacher:
        result = _run(teacher, _prompts(tmp_path), out, api_key=key)
        assert teacher.requests[0][1]["Authorization"] == f"Bearer {key}"
    for path in result.path.rglob("*"):
        assert key not in path.read_text(encoding="utf-8"), path


def test_no_usable_answer_is_an_error_and_the_work_is_kept(tmp_path):
    with (
        FakeTeacher(lambda text, n: "400") as teacher,
        pytest.raises(PocketLMError, match="no usable answer.*the same command retries"),
    ):
        _run(teacher, _prompts(tmp_path, PROMPTS[:2]), tmp_path / "out")
    assert (tmp_path / ".out.synth-partial" / "requests.log").is_file()
    assert not (tmp_path / "out").exists()


def test_bad_settings_are_refused_before_any_request(tmp_path):
    with pytest.raises(ConfigError, match="--prompts FILE... or --seed-topics"):
        synthesize(SynthConfig(teacher_url="http://127.0.0.1:9"), tmp_path / "o")
    missing = SynthConfig(teacher_url="http://127.0.0.1:9", prompts=(str(tmp_path / "no.txt"),))
    with pytest.raises(InputError, match="no such file"):
        synthesize(missing, tmp_path / "o")
    assert list(tmp_path.iterdir()) == []  # nothing made
    for bad, match in (
        ({"top_logprobs": 21}, "top-logprobs"),
        ({"concurrency": 0}, "concurrency"),
        ({"price_per_1k_tokens": (1.0, 2.0, 3.0)}, "price"),
        ({"teacher_url": "127.0.0.1:8000"}, "not an http"),
    ):
        config = {"teacher_url": "http://127.0.0.1:9", "prompts": ("p.txt",), **bad}
        with pytest.raises(ConfigError, match=match):
            synthesize(SynthConfig(**config), tmp_path / "o")


def test_only_a_pocketlm_manifest_is_skipped_in_a_data_folder(tmp_path, synthetic_pipeline):
    folder = tmp_path / "data"
    folder.mkdir()
    chat = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}
    (folder / "manifest.json").write_text(json.dumps([chat, chat]))  # someone's records
    tok = Tokenizer.load(synthetic_pipeline["tokenizer"])
    data = load_sft_data([str(folder)], tok, SFTDataConfig(val_fraction=0.0), max_tokens=512)
    assert data.report["examples"]["train"] == 2
