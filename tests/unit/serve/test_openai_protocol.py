"""OpenAI request validation (400s naming the parameter) and response building."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("pydantic")

from pocketlm.engine.generation import TokenLogprob
from pocketlm.serve.openai_protocol import (
    MAX_N,
    ChatCompletionRequest,
    CompletionRequest,
    ProtocolError,
    parse_request,
)
from pocketlm.serve.openai_responses import (
    SSE_DONE,
    TokenTexts,
    chat_logprobs,
    completion_logprobs,
    envelope,
    sse,
    usage,
)
from pocketlm.tokenizer.tokenizer import Tokenizer

CHAT = {"messages": [{"role": "user", "content": "hi"}]}


def _chat(**fields) -> bytes:
    return json.dumps({**CHAT, **fields}).encode()


def _error(model, body: bytes) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        parse_request(model, body)
    assert info.value.status == 400
    assert set(info.value.body()["error"]) == {"message", "type", "param", "code"}
    return info.value


def test_a_valid_chat_request_becomes_sampling_params():
    req = parse_request(
        ChatCompletionRequest,
        _chat(temperature=0.5, top_p=0.9, stop="\n", seed=3, n=2, max_tokens=7, top_k=5),
    )
    params = req.sampling_params(7, choice=1)
    assert (params.temperature, params.top_p, params.top_k, params.stop) == (0.5, 0.9, 5, ("\n",))
    assert params.seed == 4 and params.max_new_tokens == 7
    assert req.template_messages() == [{"role": "user", "content": "hi"}]


def test_ignore_eos_is_taken_and_off_by_default():
    assert (
        parse_request(ChatCompletionRequest, _chat(ignore_eos=True)).sampling_params(5).ignore_eos
    )
    assert not parse_request(ChatCompletionRequest, _chat()).sampling_params(5).ignore_eos
    assert _error(ChatCompletionRequest, _chat(ignore_eos="yes")).param == "ignore_eos"


def test_defaults_and_tiny_temperatures():
    req = parse_request(ChatCompletionRequest, _chat())
    assert req.sampling_params(5).temperature == 1.0 and req.token_limit() is None
    assert parse_request(ChatCompletionRequest, _chat(temperature=1e-300)).sampling_params(5).greedy


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": -1}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"temperature": True}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"n": 0}, "n"),
        ({"n": MAX_N + 1}, "n"),
        ({"n": 10**30}, "n"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 1.5}, "max_tokens"),
        ({"seed": -1}, "seed"),
        ({"stop": ""}, "stop"),
        ({"stop": ["a"] * 17}, "stop"),
        ({"stop": [1]}, "stop"),
        ({"logprobs": 3}, "logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"top_logprobs": 99, "logprobs": True}, "top_logprobs"),
        ({"presence_penalty": 1.0}, "presence_penalty"),
        ({"tools": [{"type": "function"}]}, "tools"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"stream": "yes"}, "stream"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        ({"messages": "hi"}, "messages"),
    ],
)
def test_bad_chat_fields_name_the_parameter(fields, param):
    assert _error(ChatCompletionRequest, _chat(**fields)).param == param


def test_missing_messages_and_bad_json():
    err = _error(ChatCompletionRequest, b"{}")
    assert err.param == "messages" and "required" in err.message
    assert _error(ChatCompletionRequest, b'{"messages": [').code == "invalid_json"
    assert _error(ChatCompletionRequest, b"[1, 2]").code == "invalid_json"
    assert _error(ChatCompletionRequest, b"\xff\xfe").code == "invalid_json"
    nan = b'{"messages": [{"role": "user", "content": "x"}], "temperature": NaN}'
    assert _error(ChatCompletionRequest, nan).code == "invalid_json"


def test_completion_requests():
    req = parse_request(CompletionRequest, b'{"prompt": ["a", "b"], "n": 2, "logprobs": 2}')
    assert req.prompts() == ["a", "b"] and req.logprobs == 2
    assert _error(CompletionRequest, b'{"prompt": []}').param == "prompt"
    assert _error(CompletionRequest, b'{"prompt": "a", "logprobs": 6}').param == "logprobs"
    assert (
        _error(CompletionRequest, b'{"prompt": "a", "echo": true, "stream": true}').param == "echo"
    )
    assert _error(CompletionRequest, b'{"prompt": 5}').param == "prompt"
    assert _error(CompletionRequest, b"{}").param == "prompt"
    many = json.dumps({"prompt": ["a"] * 16, "n": 8}).encode()
    assert _error(CompletionRequest, many).param == "n"


def test_a_lone_surrogate_is_refused_naming_where_it_is():
    lone = b'{"messages": [{"role": "user", "content": "ab\\ud800c"}]}'
    err = _error(ChatCompletionRequest, lone)
    assert (err.param, err.code) == ("messages[0].content", "invalid_unicode")
    assert "character 2" in err.message
    err = _error(CompletionRequest, b'{"prompt": ["ok", "\\udfff"]}')
    assert err.param == "prompt"
    err = _error(CompletionRequest, b'{"prompt": "x", "stop": ["\\ud800"]}')
    assert err.param == "stop"
    assert _error(CompletionRequest, b'{"prompt": "x", "\\ud800": 1}').param is None
    pair = parse_request(CompletionRequest, b'{"prompt": "\\ud83d\\ude00"}')
    assert pair.prompts() == ["\U0001f600"]  # an escaped pair is one character: fine


# Any code point, with surrogates (rare in st.characters()) drawn often on purpose.
_chars = st.characters() | st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(_chars, max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(_chars, max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(
    fields=st.dictionaries(
        st.sampled_from(["prompt", "messages", "stop", "user", "model"])
        | st.text(_chars, max_size=4),
        _json_values,
        max_size=4,
    ),
    model=st.sampled_from([ChatCompletionRequest, CompletionRequest]),
)
def test_any_unicode_parses_or_gets_a_400_that_encodes(fields, model):
    """Strings of any code points, lone surrogates included (as JSON escapes): a request, or a
    ProtocolError whose body is valid UTF-8 JSON; never another exception."""
    base = {"prompt": "x", "messages": [{"role": "user", "content": "x"}]}
    body = json.dumps(base | fields, ensure_ascii=True).encode()
    try:
        req = parse_request(model, body)
    except ProtocolError as exc:
        assert exc.status == 400
        json.dumps(exc.body(), ensure_ascii=False).encode("utf-8")  # no surrogate in the reply
        return
    texts = req.prompts() if model is CompletionRequest else [m.text() for m in req.messages]
    for text in (*texts, *req.stop_list()):
        text.encode("utf-8")  # everything the tokenizer will see is Unicode


def test_content_parts_and_developer_role():
    body = json.dumps(
        {
            "messages": [
                {"role": "developer", "content": "be brief"},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                },
            ]
        }
    ).encode()
    req = parse_request(ChatCompletionRequest, body)
    assert req.template_messages() == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "ab"},
    ]


def test_sse_framing_keeps_unicode():
    assert sse({"a": "é😀"}) == 'data: {"a": "é😀"}\n\n'.encode()
    assert SSE_DONE == b"data: [DONE]\n\n"
    out = envelope("chat.completion", "id", 1, "m", [], usage(3, 4))
    assert out["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}


def test_logprob_objects(synthetic_pipeline):
    tok = Tokenizer.load(synthetic_pipeline["tokenizer"])
    texts = TokenTexts(tok)
    ids = tok.encode(" the cat é")
    entries = [TokenLogprob(i, -0.5, ((i, -0.5),)) for i in ids]
    entries.append(TokenLogprob(tok.end_of_turn_id, -0.1))  # not part of the text: left out
    obj, offset = completion_logprobs(entries, texts)
    assert len(obj["tokens"]) == len(ids) and obj["token_logprobs"] == [-0.5] * len(ids)
    assert obj["text_offset"][0] == 0 and offset == sum(len(t) for t in obj["tokens"])
    chat = chat_logprobs(entries, texts)["content"]
    assert b"".join(bytes(e["bytes"]) for e in chat) == " the cat é".encode()
    assert chat[0]["top_logprobs"][0]["logprob"] == -0.5
