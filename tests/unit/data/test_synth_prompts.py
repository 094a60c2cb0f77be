"""synth's inputs and outputs read purely: prompt files of every kind (errors located), ids and
de-duplication, the teacher's topic lists, replies with top_logprobs, the append-only files
(a cut last line repaired, any other bad line refused) and the cost totals."""

from __future__ import annotations

import json
import logging

import pytest

from pocketlm.common.errors import ConfigError, InputError
from pocketlm.data.synth.ledger import JsonlFile, answer_key, load_state
from pocketlm.data.synth.prompts import (
    make_prompt,
    parse_topic_reply,
    prompt_id,
    read_prompt_files,
    topic_id,
    topic_messages,
    unique_prompts,
)
from pocketlm.data.synth.replies import ReplyProblem, parse_reply, sparse_targets
from pocketlm.data.synth.tally import Price, format_totals, totals

U = "user"


def _write(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_prompt_files_of_every_kind(tmp_path):
    txt = _write(tmp_path / "a.txt", ["What is a cat?", "", "  Why is the sky blue?  "])
    records = [
        {"prompt": "Name a prime."},
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]},
        {"instruction": "Translate", "input": "chat", "system": "Be brief."},
    ]
    jsonl = _write(tmp_path / "b.jsonl", [json.dumps(r) for r in records])
    arr = tmp_path / "c.json"
    arr.write_text(json.dumps([{"prompt": "From an array"}]))
    prompts = read_prompt_files([txt, jsonl, arr], system="Default system.")
    assert [p.messages[-1]["content"] for p in prompts] == [
        "What is a cat?",
        "Why is the sky blue?",
        "Name a prime.",
        "Hi",  # the trailing assistant turn dropped: answered again by the teacher
        "Translate\n\nchat",
        "From an array",
    ]
    assert prompts[0].messages[0] == {"role": "system", "content": "Default system."}
    assert prompts[4].messages[0] == {"role": "system", "content": "Be brief."}  # its own kept
    assert prompts[1].origin == f"{txt}:3" and prompts[5].origin == f"{arr}:1"


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ("{not json", "invalid JSON"),
        ('{"text": "x"}', "no prompt field.*text"),
        ('{"messages": [{"role": "assistant", "content": "x"}]}', "end with a non-empty user"),
        ('{"messages": [{"role": "bot", "content": "x"}]}', r"messages\[0\]"),
        ('{"prompt": 3}', "'prompt' is int"),
        ("[1, 2]", "not an object"),
    ],
)
def test_bad_prompt_records_are_located(tmp_path, line, match):
    path = _write(tmp_path / "p.jsonl", ['{"prompt": "fine"}', line])
    with pytest.raises(InputError, match=match) as info:
        read_prompt_files([path])
    assert info.value.line == 2 and info.value.path == str(path)


def test_unsupported_or_missing_prompt_files(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_prompt_files([tmp_path / "missing.txt"])
    (tmp_path / "p.csv").write_text("a\n")
    with pytest.raises(InputError, match="unsupported prompts file type .csv"):
        read_prompt_files([tmp_path / "p.csv"])


def test_ids_fold_case_and_whitespace_and_duplicates_are_dropped():
    a = make_prompt([{"role": U, "content": "What is  a Cat?"}], None, "x")
    b = make_prompt([{"role": U, "content": "what is a cat?\n"}], None, "y")
    c = make_prompt([{"role": U, "content": "what is a dog?"}], None, "z")
    assert a.id == b.id != c.id
    assert a.id == prompt_id([{"role": U, "content": "WHAT IS A CAT?"}])
    kept, dropped = unique_prompts([a, c, b])
    assert [p.origin for p in kept] == ["x", "z"] and dropped == 1
    with_system = make_prompt([{"role": U, "content": "What is a cat?"}], "Be brief.", "w")
    assert with_system.id != a.id  # the system prompt is part of the request


def test_topic_replies_become_prompt_lines():
    reply = (
        "Here are 4 requests:\n"
        "1. How do I sort a list?\n"
        '2) "Explain list slicing."\n'
        "- How do I sort a list?\n"
        "* What does append return?\n"
        "\n"
        "(5) Reverse a list in place.\n"
        "Extra beyond n\n"
    )
    assert parse_topic_reply(reply, 4) == [
        "How do I sort a list?",
        "Explain list slicing.",
        "What does append return?",
        "Reverse a list in place.",
    ]
    assert "12" in topic_messages("python lists", 12)[0]["content"]
    assert (
        topic_id("Python  lists", 5) == topic_id("python lists", 5) != topic_id("python lists", 6)
    )


def _chat(content="Hi there", logprobs=None, **extra):
    choice = {"index": 0, "message": {"role": "assistant", "content": content}}
    choice.update(logprobs=logprobs, finish_reason="stop")
    return {"model": "m", "choices": [choice], **extra}


def test_replies_keep_text_usage_and_sparse_targets():
    lp = {
        "content": [
            {
                "token": "Hi",
                "logprob": -0.1,
                "bytes": [72, 105],
                "top_logprobs": [
                    {"token": "Hi", "logprob": -0.1, "bytes": [72, 105]},
                    {"token": "Hello", "logprob": -2.500000123456, "bytes": None},
                ],
            },
            {  # half of a two-byte character: the text is lossy, the bytes are kept
                "token": "\ufffd",
                "logprob": None,
                "bytes": [195],
                "top_logprobs": [{"token": "\ufffd", "logprob": -1.0, "bytes": [195]}],
            },
        ]
    }
    usage = {"prompt_tokens": 5, "completion_tokens": 2}
    reply = parse_reply(_chat(logprobs=lp, usage=usage))
    assert (reply.text, reply.finish_reason, reply.model) == ("Hi there", "stop", "m")
    assert (reply.prompt_tokens, reply.completion_tokens) == (5, 2)
    assert reply.logprobs == [
        {"token": "Hi", "logprob": -0.1, "top": [["Hi", -0.1], ["Hello", -2.5]]},
        {"token": "\ufffd", "logprob": None, "bytes": [195], "top": [["\ufffd", -1.0, [195]]]},
    ]
    plain = parse_reply(_chat())
    assert plain.logprobs is None and plain.prompt_tokens is None


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"object": "list"}, "no 'choices'"),
        ({"choices": [{"index": 0}]}, "message"),
        (_chat(content=3), "not text"),
        (_chat(logprobs={"content": [{"logprob": -1}]}), "no 'token'"),
        (_chat(logprobs={"content": [{"token": "a", "logprob": "x"}]}), "not a number"),
    ],
)
def test_unreadable_replies_name_the_field(data, match):
    with pytest.raises(ReplyProblem, match=match):
        parse_reply(data)
    assert sparse_targets(None) is None


def test_append_only_files_repair_a_cut_last_line_and_refuse_other_damage(tmp_path, caplog):
    # the pocketlm loggers stop propagating once a command set logging up (an earlier test may
    # have): listen on the synth logger itself
    logger = logging.getLogger("pocketlm.synth")
    logger.addHandler(caplog.handler)
    try:
        _repair_and_refuse(tmp_path, caplog)
    finally:
        logger.removeHandler(caplog.handler)


def _repair_and_refuse(tmp_path, caplog) -> None:
    path = tmp_path / "d.jsonl"
    f = JsonlFile(path)
    f.append({"a": 1})
    f.append({"b": "ü"})
    f.close()
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"c": 3, "cut')  # a kill in the middle of a write
    assert JsonlFile(path).read() == [{"a": 1}, {"b": "ü"}]
    assert path.read_bytes() == whole and "partial last line" in caplog.text
    path.write_bytes(b'{"a": 1}\n{broken}\n{"c": 3}\n')
    with pytest.raises(InputError, match="unreadable line") as info:
        JsonlFile(path).read()
    assert info.value.line == 2
    assert JsonlFile(tmp_path / "missing.jsonl").read() == []


def test_state_counts_records_even_without_their_log_line(tmp_path):
    data, log = JsonlFile(tmp_path / "data.jsonl"), JsonlFile(tmp_path / "requests.log")
    log.append({"kind": "settings", "settings": {"model": "m"}})
    log.append({"kind": "run", "run": 1})
    log.append({"kind": "topic", "id": "t1", "outcome": "ok", "prompts": ["q1", "q2"]})
    log.append({"kind": "answer", "id": "p1", "outcome": "kept", "attempts": 1})
    log.append({"kind": "answer", "id": "p2", "outcome": "failed", "attempts": 7})
    log.append({"kind": "answer", "id": "p3", "outcome": "duplicate_answer", "attempts": 1})
    answer = {"role": "assistant", "content": "A."}
    data.append({"id": "p1", "messages": [{"role": U, "content": "1"}, answer]})
    usage = {"prompt_tokens": 3, "completion_tokens": 4}
    data.append({"id": "p4", "messages": [answer], "teacher": {"usage": usage}})  # no log line
    state = load_state(data, log)
    assert state.settings == {"model": "m"} and state.runs == 1 and state.records == 2
    assert state.answered == {"p1", "p3", "p4"}  # p2 failed: sent again
    assert state.topics == {"t1": ["q1", "q2"]}
    assert state.answer_keys == {answer_key("a.")}
    assert {"kind": "answer", "id": "p4", "outcome": "kept", **usage} in state.entries


def test_totals_of_the_cost_log():
    entries = [
        {"kind": "topic", "outcome": "ok", "attempts": 1, "prompt_tokens": 10, "completion_tokens": 50},
        {"kind": "answer", "outcome": "kept", "attempts": 3, "prompt_tokens": 5, "completion_tokens": 20},
        {"kind": "answer", "outcome": "kept", "attempts": 1},  # an API without usage
        {"kind": "answer", "outcome": "failed", "attempts": 7, "error": "HTTP 500"},
        {"kind": "answer", "outcome": "duplicate_answer", "attempts": 1, "prompt_tokens": 5,
         "completion_tokens": 20, "seconds": 1.5},
    ]  # fmt: skip
    t = totals(entries, price=Price.parse([1.0, 2.0]), elapsed_s=10.0)
    assert t["records"] == 2 and t["failures"] == 1 and t["http_requests"] == 13
    assert t["retries"] == 8 and t["replies_without_usage"] == 1
    assert (t["prompt_tokens"], t["completion_tokens"]) == (20, 90)
    assert t["cost"] == pytest.approx((20 * 1.0 + 90 * 2.0) / 1000)
    assert t["answers"] == {"kept": 2, "failed": 1, "duplicate_answer": 1}
    assert t["records_per_s"] == 0.2 and t["completion_tokens_per_s"] == 9.0
    line = format_totals(t)
    assert "2 records (1 duplicate answer, 1 failed)" in line and "cost 0.2000" in line
    with pytest.raises(ConfigError):
        Price.parse([1.0, 2.0, 3.0])
