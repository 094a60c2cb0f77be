"""/v1/completions with echo: the prompt's tokens and log-probabilities (the first null), max_tokens
0 scoring only, token-id prompts, and lm-eval's local-completions request giving the same
log-likelihood as `pocketlm eval`'s scoring code."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from starlette.testclient import TestClient

from pocketlm.engine.load import open_backend
from pocketlm.engine.scheduler import BatchScheduler
from pocketlm.evals.loglikelihood import encode_pairs, score_continuations
from pocketlm.serve.app import ServerSettings, create_app


@pytest.fixture(scope="module")
def client(tiny_model_dir):
    backend, tokenizer = open_backend(tiny_model_dir, slots=2, backend="torch", device="cpu")
    app = create_app(BatchScheduler(backend, tokenizer), tokenizer, ServerSettings(model_id="tiny"))
    with TestClient(app, base_url="http://127.0.0.1") as c:
        c.tokenizer = tokenizer
        yield c


@pytest.fixture(scope="module")
def reference(tiny_model_dir):
    return open_backend(tiny_model_dir, backend="torch", device="cpu")


def _post(client, **body):
    response = client.post("/v1/completions", json={"model": "tiny", **body})
    assert response.status_code == 200, response.text
    return response.json()


def test_echo_lists_the_prompt_tokens_with_their_logprobs(client):
    tok = client.tokenizer
    ids = tok.encode("The happy dog ran to the park")
    out = _post(client, prompt=ids, echo=True, logprobs=1, max_tokens=0)
    choice = out["choices"][0]
    assert choice["finish_reason"] == "length" and out["usage"]["completion_tokens"] == 0
    lp = choice["logprobs"]
    assert len(lp["tokens"]) == len(ids) and choice["text"] == tok.decode(ids)
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert all(x < 0 for x in lp["token_logprobs"][1:])
    for value, top in zip(lp["token_logprobs"][1:], lp["top_logprobs"][1:], strict=True):
        assert len(top) == 1 and max(top.values()) >= value  # the argmax and its logprob
    assert lp["text_offset"][0] == 0 and lp["text_offset"] == sorted(lp["text_offset"])


def test_echo_then_generate_appends_the_completion(client):
    out = _post(client, prompt="The cat", echo=True, logprobs=0, max_tokens=3, temperature=0)
    choice = out["choices"][0]
    plain = _post(client, prompt="The cat", logprobs=0, max_tokens=3, temperature=0)["choices"][0]
    assert choice["text"] == "The cat" + plain["text"]
    lp = choice["logprobs"]
    generated = plain["logprobs"]["tokens"]
    assert lp["tokens"][-len(generated) :] == generated
    # a text prompt is scored after the <bos> the server puts first: no token is null
    assert len(lp["tokens"]) == len(client.tokenizer.encode("The cat")) + len(generated)
    assert all(isinstance(x, float) for x in lp["token_logprobs"])


def test_lm_eval_local_completions_request_scores_as_pocketlm_eval(client, reference):
    """lm-eval's request: prompt = context + continuation tokens, echo, logprobs 1, max_tokens 1
    (or 0); it sums token_logprobs[ctxlen:-1] (ctxlen: the context's tokens)."""
    backend, tok = reference
    context, conts = encode_pairs(tok, "The little girl said", [" hello", " the big red ball"])
    expected = score_continuations(backend, context, conts)
    for cont, want in zip(conts, expected, strict=True):
        body = {"prompt": [context + cont], "echo": True, "logprobs": 1, "temperature": 0}
        one = _post(client, max_tokens=1, **body)["choices"][0]["logprobs"]
        got = sum(one["token_logprobs"][len(context) : -1])
        greedy = all(
            v == max(t.values())
            for v, t in zip(
                one["token_logprobs"][len(context) : -1], one["top_logprobs"][len(context) : -1]
            )
        )
        assert math.isclose(got, want.loglikelihood, abs_tol=1e-4) and greedy == want.greedy
        zero = _post(client, max_tokens=0, **body)["choices"][0]["logprobs"]
        assert math.isclose(sum(zero["token_logprobs"][len(context) :]), got, abs_tol=1e-6)


def test_echo_refusals_name_the_parameter(client):
    def error(**body):
        r = client.post("/v1/completions", json={"model": "tiny", **body})
        assert r.status_code == 400, r.text
        return r.json()["error"]["param"]

    assert error(prompt="a", max_tokens=0) == "max_tokens"
    assert error(prompt="a", echo=True, stream=True) == "echo"
    assert error(prompt=[5, 10**9], echo=True, max_tokens=0) == "prompt"
    assert error(prompt=[[]], echo=True, max_tokens=0) == "prompt"
