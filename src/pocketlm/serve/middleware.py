"""Plain ASGI middleware for the server: metrics, an OpenAI answer whatever happens, API-key
check, JSON content type, request-body size cap and read timeout.

Written against the ASGI interface directly (not Starlette's BaseHTTPMiddleware) so streamed
responses pass through untouched and a client's disconnect still reaches the endpoint.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from pocketlm.common.log import get_logger
from pocketlm.serve.metrics import ServerMetrics
from pocketlm.serve.openai_protocol import error_body
from pocketlm.serve.openai_responses import SSE_DONE, sse

_log = get_logger("pocketlm.server")

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


async def send_error(
    send: Send,
    status: int,
    message: str,
    *,
    code: str | None = None,
    type: str = "invalid_request_error",
    headers: Iterable[tuple[str, str]] = (),
) -> None:
    """Send a whole JSON response with an OpenAI error body."""
    body = json.dumps(error_body(message, type=type, code=code)).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in headers]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of header `name` (lowercase bytes) as text, or None."""
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


class MetricsMiddleware:
    """Counts every HTTP request by route and status and times it to its last byte."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def counting_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            self.metrics.observe_request(scope["path"], status, time.perf_counter() - start)


class ErrorGuardMiddleware:
    """Every request ends with an OpenAI answer, whatever happens inside.

    An exception (logged here, never echoed to the client) answers 500; a cancellation (a
    shutdown that ran past its grace and its backstop) answers 503 shutting_down. A stream
    already under way ends with that error as an event and [DONE] instead of a cut connection.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = complete = streaming = False

        async def tracking_send(message: Message) -> None:
            nonlocal started, complete, streaming
            if message["type"] == "http.response.start":
                started = True
                streaming = any(
                    k.lower() == b"content-type" and v.startswith(b"text/event-stream")
                    for k, v in message.get("headers", ())
                )
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                complete = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
            if started:
                return
            # Returned without answering: only right when the client left (send is then a no-op).
            status, type, code = 500, "server_error", "no_response"
            message = "internal error: the server did not answer this request"
        except asyncio.CancelledError:
            # Swallowed on purpose: this is the request's own task, and its client is still
            # owed an answer; uvicorn cancels each task once.
            status, type, code = 503, "server_busy", "shutting_down"
            message = "the server is shutting down and stopped this request"
        except Exception:
            _log.exception("request failed: %s %s", scope.get("method"), scope.get("path"))
            status, type, code = 500, "server_error", "internal_error"
            message = "internal error while answering this request; the server log has the details"
        if not started:
            await send_error(send, status, message, type=type, code=code)
        elif streaming and not complete:
            event = sse(error_body(message, type=type, code=code)) + SSE_DONE
            await send({"type": "http.response.body", "body": event, "more_body": False})


class ApiKeyMiddleware:
    """Requires `Authorization: Bearer KEY` on every path except the public ones."""

    def __init__(self, app: ASGIApp, api_key: str, public_paths: Iterable[str]) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode()
        self.public = frozenset(public_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.public:
            await self.app(scope, receive, send)
            return
        given = (header(scope, b"authorization") or "").strip().encode("latin-1")
        if not hmac.compare_digest(given, self.expected):
            message = (
                "missing API key: send 'Authorization: Bearer KEY'"
                if not given
                else "incorrect API key provided"
            )
            await send_error(
                send,
                401,
                message,
                code="invalid_api_key",
                headers=[("www-authenticate", "Bearer")],
            )
            return
        await self.app(scope, receive, send)


def json_content_type_problem(value: str | None) -> str | None:
    """What is wrong with a Content-Type for a JSON body (None: it is application/json, UTF-8)."""
    want = "send 'Content-Type: application/json' with a JSON body"
    if value is None:
        return f"the request has no Content-Type: {want}"
    media, *params = value.split(";")
    if media.strip().lower() != "application/json":
        return f"the Content-Type {value[:100]!r} is not JSON: {want}"
    for param in params:
        key, _, charset = param.partition("=")
        charset = charset.strip().strip('"').lower()
        if key.strip().lower() == "charset" and charset not in ("utf-8", "utf8"):
            return f"the charset {charset[:40]!r} is not UTF-8: JSON is sent as UTF-8"
    return None


class JsonContentTypeMiddleware:
    """Refuses a POST to `paths` whose body is not declared JSON with 415.

    Pages send text/plain, form and multipart bodies to other origins without asking first;
    application/json they must ask for (a CORS preflight), which the origin check answers.
    """

    def __init__(self, app: ASGIApp, paths: Iterable[str]) -> None:
        self.app = app
        self.paths = frozenset(paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in self.paths:
            problem = json_content_type_problem(header(scope, b"content-type"))
            if problem is not None:
                await send_error(send, 415, problem, code="unsupported_media_type")
                return
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """Refuses request bodies over `max_bytes` with 413 (by Content-Length, or while reading), and
    bodies still arriving `timeout_s` after the head with 408."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float = 30.0) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = header(scope, b"content-length")
        too_big = f"the request body is larger than the limit of {self.max_bytes} bytes"
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                await send_error(send, 400, "invalid Content-Length header")
                return
            if size > self.max_bytes:
                await send_error(send, 413, too_big, code="request_too_large")
                return
        # Read the whole body here (bounded), then hand it to the app; later receive() calls
        # still go to the server so the app can notice a disconnect.
        chunks, total, more = [], 0, True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        while more:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except TimeoutError:  # a body dribbled in slowly holds a connection: end it
                await send_error(
                    send,
                    408,
                    f"the request body did not arrive within {self.timeout_s:g} s",
                    code="request_timeout",
                    headers=[("Connection", "close")],
                )
                return
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.max_bytes:
                await send_error(send, 413, too_big, code="request_too_large")
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
