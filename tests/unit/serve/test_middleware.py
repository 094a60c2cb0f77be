"""The ASGI middleware without a server: what a client is sent when the app fails, is cancelled
or never answers."""

from __future__ import annotations

import asyncio
import json

import pytest

pytest.importorskip("pydantic")

from pocketlm.serve.middleware import ErrorGuardMiddleware

SCOPE = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": []}
SSE_START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"text/event-stream; charset=utf-8")],
}


async def _receive():
    return {"type": "http.request", "body": b"", "more_body": False}


def _run(app) -> list[dict]:
    """The messages ErrorGuardMiddleware(app) sends; the app's task is cancelled if it blocks."""
    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    async def main():
        task = asyncio.ensure_future(ErrorGuardMiddleware(app)(SCOPE, _receive, send))
        await asyncio.sleep(0.05)
        task.cancel()  # as uvicorn does once a shutdown runs past its timeout
        await asyncio.gather(task, return_exceptions=True)
        assert not task.cancelled(), "the guard finishes the request instead of dying with it"

    asyncio.run(main())
    return sent


def _error(sent: list[dict], status: int) -> dict:
    start, body = sent
    assert start["status"] == status
    assert (b"content-type", b"application/json") in start["headers"]
    error = json.loads(body["body"])["error"]
    assert set(error) == {"message", "type", "param", "code"} and not body["more_body"]
    return error


def test_an_exception_answers_500_without_echoing_it(server_log):
    async def app(scope, receive, send):
        raise RuntimeError("secret detail /home/me/model")

    error = _error(_run(app), 500)
    assert error["type"] == "server_error" and "secret" not in error["message"]
    assert "secret detail" in "\n".join(server_log)  # the log has it


def test_a_cancelled_request_answers_503_shutting_down():
    async def app(scope, receive, send):
        await asyncio.sleep(60)

    assert _error(_run(app), 503)["code"] == "shutting_down"


def test_a_cancelled_stream_ends_with_an_error_event_and_done():
    async def app(scope, receive, send):
        await send(SSE_START)
        await send({"type": "http.response.body", "body": b"data: {}\n\n", "more_body": True})
        await asyncio.sleep(60)

    sent = _run(app)
    assert [m["type"] for m in sent] == ["http.response.start"] + ["http.response.body"] * 2
    last = sent[-1]
    assert not last["more_body"]
    events = last["body"].decode().split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    assert json.loads(events[0].removeprefix("data: "))["error"]["code"] == "shutting_down"


def test_an_app_that_never_answers_gets_a_json_500():
    async def app(scope, receive, send):
        return None

    assert _error(_run(app), 500)["code"] == "no_response"


def test_a_finished_response_is_left_alone():
    async def app(scope, receive, send):
        await send(SSE_START)
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})
        raise RuntimeError("after the end")

    assert len(_run(app)) == 2
