"""The server's HTTP layer on real sockets on 127.0.0.1: broken HTTP gets OpenAI JSON, and idle
connections, partial heads, slow bodies and too many connections are bounded (short limits set
by each test; every loop here is bounded in count and time)."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from tests.integration.live_server import (  # noqa: E402
    live_server,
    make_scheduler,
    parse_response,
    raw_request,
    read_until_closed,
    wait_until,
)

HOST = b"Host: 127.0.0.1\r\n"


def assert_openai_error(response, status: int, code: str | None = None) -> dict:
    assert response is not None, "no response"
    assert response.status == status, (response.status, response.body)
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if code is not None:
        assert error["code"] == code, error
    return error


@pytest.fixture()
def quick_limits(tiny_model_dir):
    """A server whose connections idle out after 0.3 s, heads after 0.5 s, bodies after 0.5 s."""
    scheduler, tokenizer = make_scheduler(tiny_model_dir, slots=1)
    with live_server(
        scheduler, tokenizer, idle_timeout_s=0.3, header_timeout_s=0.5, body_timeout_s=0.5
    ) as srv:
        yield srv


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n" + HOST + b"Bad Header: x\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n" + HOST + b"X-Nul: a\x00b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n\r\n", 400),  # HTTP/1.1 without Host
        (b"POST /v1/completions HTTP/1.1\r\n" + HOST + b"Content-Length: abc\r\n\r\n", 400),
        (
            b"POST /v1/completions HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: gzip\r\n\r\n",
            400,  # h11 hints 501 (a coding it lacks): still the client's request, so 400
        ),
        (
            b"POST /v1/completions HTTP/1.1\r\n" + HOST + b"Content-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
            400,
        ),
        (b"GET / HTTP/1.1\r\n" + HOST + b"X-Big: " + b"a" * 20_000, 431),  # an endless head
    ],
    ids=[
        "request-line",
        "header-name",
        "nul-in-value",
        "no-host",
        "length",
        "coding",
        "chunk",
        "big-head",
    ],
)
def test_broken_http_gets_an_openai_error(quick_limits, request_bytes, status):
    response = raw_request(quick_limits.port, request_bytes, timeout_s=5)
    assert_openai_error(response, status)
    assert response.headers["connection"] == "close"


def test_a_connection_that_sends_nothing_is_closed_after_the_idle_timeout(quick_limits):
    with socket.create_connection(("127.0.0.1", quick_limits.port), timeout=5) as sock:
        start = time.monotonic()
        assert read_until_closed(sock, timeout_s=5) == b""  # closed without a word
        assert 0.2 < time.monotonic() - start < 3


def test_a_dribbled_head_gets_408_at_the_header_timeout(quick_limits):
    head = b"GET /health HTTP/1.1\r\n" + HOST + b"X-Slow: " + b"a" * 100
    with socket.create_connection(("127.0.0.1", quick_limits.port), timeout=5) as sock:
        start = time.monotonic()
        for byte in head:  # a byte every 20 ms keeps the idle timer away, never the head's
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break  # closed on us
            time.sleep(0.02)
            if time.monotonic() - start > 3:
                break
        response = parse_response(read_until_closed(sock, timeout_s=5))
        elapsed = time.monotonic() - start
    assert_openai_error(response, 408, "request_timeout")
    assert 0.4 < elapsed < 3.5


def test_a_slow_body_gets_408_at_the_body_timeout(quick_limits):
    head = (
        b"POST /v1/completions HTTP/1.1\r\n" + HOST + b"Content-Type: application/json\r\n"
        b"Content-Length: 100\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", quick_limits.port), timeout=5) as sock:
        sock.sendall(head + b'{"prompt": ')
        start = time.monotonic()
        response = parse_response(read_until_closed(sock, timeout_s=5), "POST")
    assert_openai_error(response, 408, "request_timeout")
    assert 0.4 < time.monotonic() - start < 3


def test_past_the_cap_the_oldest_partial_request_makes_room(tiny_model_dir):
    scheduler, tokenizer = make_scheduler(tiny_model_dir, slots=1)
    with live_server(scheduler, tokenizer, max_connections=4, header_timeout_s=30) as srv:
        partial = []
        try:
            for _ in range(4):  # a slowloris: four heads that never end
                sock = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
                sock.sendall(b"GET /health HTTP/1.1\r\n" + HOST)
                partial.append(sock)
                time.sleep(0.05)  # distinct ages
            start = time.monotonic()
            assert httpx.get(srv.url + "/health", timeout=5).status_code == 200
            assert time.monotonic() - start < 2  # served at once, not after the 30 s timeout
            oldest = parse_response(read_until_closed(partial[0], timeout_s=5))
            assert_openai_error(oldest, 408, "request_timeout")
            partial[1].settimeout(0.2)
            with pytest.raises(TimeoutError):
                partial[1].recv(1)  # the younger ones are still open
        finally:
            for sock in partial:
                sock.close()


def test_past_the_cap_with_every_connection_busy_a_newcomer_gets_503(tiny_model_dir):
    scheduler, tokenizer = make_scheduler(tiny_model_dir, slots=1, max_queue=4, delay_s=0.05)
    with live_server(scheduler, tokenizer, max_connections=2) as srv:
        body = {"messages": [{"role": "user", "content": "Hi"}], "stream": True, "max_tokens": 400}
        done = threading.Event()

        def hold() -> None:
            with (
                httpx.Client(base_url=srv.url, timeout=30) as c,
                c.stream("POST", "/v1/chat/completions", json=body) as response,
            ):
                for _ in response.iter_lines():
                    if done.is_set():
                        return

        holders = [threading.Thread(target=hold) for _ in range(2)]
        for t in holders:
            t.start()
        try:
            assert wait_until(lambda: scheduler.stats().active + scheduler.stats().queued == 2)
            refused = raw_request(srv.port, b"GET /health HTTP/1.1\r\n" + HOST + b"\r\n")
            error = assert_openai_error(refused, 503, "too_many_connections")
            assert error["type"] == "server_busy" and refused.headers["retry-after"] == "1"
        finally:
            done.set()
            for t in holders:
                t.join(30)
        assert wait_until(lambda: httpx.get(srv.url + "/health", timeout=5).status_code == 200)


def test_an_error_body_is_json_even_for_a_request_line_of_bytes(quick_limits):
    """Bytes that are not ASCII in the request target: h11 refuses them, the answer is JSON."""
    response = raw_request(quick_limits.port, b"GET /\xff\xfe HTTP/1.1\r\n" + HOST + b"\r\n")
    error = assert_openai_error(response, 400, "invalid_http")
    json.dumps(error).encode("ascii")
