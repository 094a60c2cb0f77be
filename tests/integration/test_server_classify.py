"""A classifier served live on 127.0.0.1: POST /v1/classify answers labels and probabilities as
the engine computes them, with the limits and error bodies of the generation routes; the
generation routes of a classifier, and /v1/classify of a language model, answer a clear 400."""

from __future__ import annotations

import argparse
import json
import threading

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from pocketlm.common.errors import ConfigError  # noqa: E402
from pocketlm.engine.classify import open_classifier  # noqa: E402
from pocketlm.engine.classify_batcher import ClassifyBatcher  # noqa: E402
from pocketlm.serve.openai_protocol import MAX_CLASSIFY_INPUTS  # noqa: E402
from tests.integration.live_server import live_server, make_scheduler  # noqa: E402

TEXTS = ["the cat sat on the mat", "a sad day", "happy happy dog", "the"]


@pytest.fixture(scope="module")
def classifier(tiny_classifier_dir):
    return open_classifier(tiny_classifier_dir, device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def server(classifier):
    batcher = ClassifyBatcher(classifier, max_batch=4, max_queue=8)
    with live_server(batcher, classifier.tokenizer, model_id="sentiment") as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def _error(response, status: int, code: str | None = None, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if code is not None:
        assert error["code"] == code, error
    if param is not None:
        assert error["param"] == param, error
    return error


def test_classify_answers_the_engines_labels_and_probabilities(client, classifier):
    got = client.post("/v1/classify", json={"input": TEXTS, "model": "anything"})
    assert got.status_code == 200, got.text
    body = got.json()
    assert body["object"] == "list" and body["model"] == "sentiment"
    want = classifier.predict(TEXTS)
    assert [d["index"] for d in body["data"]] == list(range(len(TEXTS)))
    for item, w in zip(body["data"], want, strict=True):
        assert item["label"] == w.label and list(item["probabilities"]) == ["negative", "positive"]
        assert item["probabilities"] == pytest.approx(w.probabilities, abs=1e-6)
    assert body["usage"]["prompt_tokens"] == sum(w.tokens for w in want)
    assert len({d["label"] for d in body["data"]}) == 2  # both labels occur
    one = client.post("/v1/classify", json={"input": TEXTS[1]}).json()
    assert one["data"][0]["probabilities"] == pytest.approx(body["data"][1]["probabilities"])


def test_models_health_and_metrics_describe_the_classifier(client):
    models = client.get("/v1/models").json()["data"]
    assert [(m["id"], m["labels"]) for m in models] == [("sentiment", ["negative", "positive"])]
    assert client.get("/v1/models/sentiment").json()["labels"] == ["negative", "positive"]
    _error(client.get("/v1/models/other"), 404, "model_not_found")
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["model"] == "sentiment"
    assert 'route="/v1/classify"' in client.get("/metrics").text


@pytest.mark.parametrize("route", ["/v1/completions", "/v1/chat/completions"])
def test_a_classifier_refuses_to_generate(client, route):
    body = {"prompt": "hi", "messages": [{"role": "user", "content": "hi"}]}
    error = _error(client.post(route, json=body), 400, "model_is_classifier")
    assert "POST /v1/classify" in error["message"]


@pytest.mark.parametrize(
    "body, param, code",
    [
        ({}, "input", None),
        ({"input": []}, "input", None),
        ({"input": ["a"] * (MAX_CLASSIFY_INPUTS + 1)}, "input", None),
        ({"input": 3}, "input", None),
        ({"input": ["ok", 3]}, "input", None),
        ({"input": "the cat " * 400}, "input", "context_length_exceeded"),
        ({"input": ["ok", "the cat " * 400]}, "input[1]", "context_length_exceeded"),
        ({"input": "\ud800"}, "input", "invalid_unicode"),
    ],
)
def test_bad_requests_get_openai_400s(client, body, param, code):
    raw = json.dumps(body).encode()  # ASCII: a lone surrogate goes as its JSON escape
    _error(client.post("/v1/classify", content=raw, headers=_json()), 400, code, param)


def test_bodies_content_types_and_json_follow_the_server_rules(client):
    _error(client.post("/v1/classify", content=b"{not json", headers=_json()), 400, "invalid_json")
    response = client.post(
        "/v1/classify", content=b'{"input": "x"}', headers={"Content-Type": "text/plain"}
    )
    assert response.status_code == 415
    big = b'{"input": "' + b"a" * 2_000_000 + b'"}'
    assert client.post("/v1/classify", content=big, headers=_json()).status_code == 413


def _json() -> dict[str, str]:
    return {"Content-Type": "application/json"}


def test_a_full_queue_gets_503_with_retry_after(classifier):
    gate = threading.Event()

    class Held:
        labels, context_length = classifier.labels, classifier.context_length

        def predict(self, inputs, batch_size=32):
            gate.wait(10)
            return classifier.predict(inputs, batch_size)

    batcher = ClassifyBatcher(Held(), max_batch=1, max_queue=1)
    server = live_server(batcher, classifier.tokenizer, model_id="held")
    with server as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        results = []
        first = threading.Thread(
            target=lambda: results.append(c.post("/v1/classify", json={"input": "a"}))
        )
        first.start()
        for _ in range(200):
            if batcher.stats().active:
                break
            threading.Event().wait(0.01)
        second = threading.Thread(
            target=lambda: results.append(c.post("/v1/classify", json={"input": "b"}))
        )
        second.start()
        for _ in range(200):
            if batcher.stats().queued:
                break
            threading.Event().wait(0.01)
        busy = c.post("/v1/classify", json={"input": "c"})
        _error(busy, 503, "queue_full")
        assert busy.headers["retry-after"] == "1"
        _error(c.post("/v1/classify", json={"input": ["x", "y", "z"]}), 400, param="input")
        gate.set()
        first.join(30), second.join(30)
    assert [r.status_code for r in results] == [200, 200]


def test_a_language_model_refuses_classify(tiny_model_dir):
    scheduler, tokenizer = make_scheduler(tiny_model_dir, slots=1)
    with live_server(scheduler, tokenizer) as srv:
        response = httpx.post(f"{srv.url}/v1/classify", json={"input": "hi"}, timeout=30)
    error = _error(response, 400, "model_not_classifier")
    assert "not a classifier" in error["message"]


def test_serve_opens_a_classifier_alone(tiny_classifier_dir, tmp_path):
    from pocketlm.cli.main import build_parser
    from pocketlm.cli.serve_cmd import open_models

    args = build_parser().parse_args(["serve", "--model", str(tiny_classifier_dir), "--slots", "3"])
    base, adapters = open_models(args, threads=1)
    assert isinstance(base.scheduler, ClassifyBatcher) and adapters == []
    assert base.scheduler.max_batch == 3 and base.scheduler.labels == ("negative", "positive")
    args = build_parser().parse_args(
        ["serve", "--model", str(tiny_classifier_dir), "--adapter", str(tmp_path)]
    )
    with pytest.raises(ConfigError, match="served alone"):
        open_models(args, threads=1)
    assert isinstance(args, argparse.Namespace)
