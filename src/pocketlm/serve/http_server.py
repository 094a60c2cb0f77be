"""uvicorn, configured for the server: OpenAI JSON even for broken HTTP, bounded connections, and a
shutdown that answers the requests it has to cut short.

uvicorn's h11 protocol answers a malformed request (request line, header, chunked framing) itself,
before any app sees it, in plain text; `OpenAIH11Protocol` writes the same answer as an OpenAI
error body. uvicorn only times out connections idle between requests: here a new connection must
also start its request within the idle timeout and finish its head within the header timeout
(408 after), so sockets held open by partial requests do not pile up. Past the connection cap a
newcomer closes the oldest connection with no request in flight (idle, or a partial head): a
client that holds sockets open cannot starve the others; when every connection has a request in
flight, the newcomer gets a 503. At shutdown the scheduler stops taking work and finishes what it
has for the grace period, then ends the rest with an error the routes answer as a 503 (whole
responses) or an error event and [DONE] (streams).
"""

from __future__ import annotations

import asyncio
import http
import json
import sys
import threading
from collections.abc import Callable
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from pocketlm.common.log import get_logger
from pocketlm.serve.middleware import Receive, Scope, Send, send_error
from pocketlm.serve.openai_protocol import error_body

_log = get_logger("pocketlm.server")
SHUTDOWN_BACKSTOP_S = 2.0  # uvicorn cancels what still runs this long after the grace period
_RESERVED_FDS = 64  # descriptors kept for the model, logs and the listening socket
# Pending connections the kernel queues, and so the most asyncio accepts in one burst before any
# of them runs (and can close an old one): the open-files limit must leave room for a burst.
LISTEN_BACKLOG = 128


def error_response_bytes(
    status: int, message: str, code: str, type: str = "invalid_request_error"
) -> bytes:
    """A whole HTTP/1.1 response with an OpenAI error body that closes the connection."""
    body = json.dumps(error_body(message, type=type, code=code)).encode("ascii")
    head = (
        f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


def _over_capacity(limit: int) -> Callable[[Scope, Receive, Send], Any]:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send_error(
            send,
            503,
            f"the server has its limit of {limit} connections open, all with a request in "
            "flight; retry later",
            type="server_busy",
            code="too_many_connections",
            headers=[("Connection", "close"), ("Retry-After", "1")],
        )

    return app


class OpenAIH11Protocol(H11Protocol):
    """uvicorn's h11 connection with OpenAI error bodies, a header timeout and a connection cap."""

    header_timeout_s: float = 10.0
    max_connections: int = 256

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.opened_at = 0.0
        self._head_timer: asyncio.TimerHandle | None = None

    # ---- connection life ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.opened_at = self.loop.time()
        open_now = [c for c in self.connections if not c.transport.is_closing()]
        if len(open_now) > self.max_connections:
            self._make_room(open_now)
        # uvicorn arms its idle timer only after a response: a connection that never sends a
        # byte is closed by it too.
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._head_timer is None and self.conn.their_state is h11.IDLE:
            self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timed_out)
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # the head is in (or broken): no more waiting
            self._cancel_head_timer()

    # ---- limits -------------------------------------------------------------------------------
    def waiting_for_request(self) -> bool:
        """True when no request is in flight here: idle, or a request head still arriving."""
        return (
            not self.transport.is_closing()
            and (self.cycle is None or self.cycle.response_complete)
            and self.conn.their_state is h11.IDLE
        )

    def _make_room(self, open_now: list[Any]) -> None:
        spare = [
            c
            for c in open_now
            if c is not self and isinstance(c, OpenAIH11Protocol) and c.waiting_for_request()
        ]
        if spare:
            min(spare, key=lambda c: c.opened_at).evict()
        else:  # every connection has a request in flight: this one is told to come back
            self.app = _over_capacity(self.max_connections)

    def evict(self) -> None:
        """Close this connection to make room for a new one (a partial head gets a 408)."""
        if self._head_timer is not None:
            self._refuse(
                408,
                "the request head was still incomplete when the server needed the connection "
                "for another client",
                "request_timeout",
            )
        else:
            self.timeout_keep_alive_handler()  # idle: closed as after a keep-alive timeout

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._refuse(
                408,
                f"the request head did not arrive within {self.header_timeout_s:g} s",
                "request_timeout",
            )

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    # ---- answers without the app --------------------------------------------------------------
    def send_400_response(self, msg: str) -> None:
        """Answer a request h11 cannot parse: 400 (431 for a head over its size limit), as JSON."""
        exc = sys.exc_info()[1]  # uvicorn calls this while handling h11's RemoteProtocolError
        hint = getattr(exc, "error_status_hint", 400)
        detail = str(exc)[:200] if exc is not None else msg
        self._refuse(431 if hint == 431 else 400, f"invalid HTTP request: {detail}", "invalid_http")

    def _refuse(self, status: int, message: str, code: str) -> None:
        self._cancel_head_timer()
        self.transport.write(error_response_bytes(status, message, code))
        self.transport.close()


def http_protocol(*, header_timeout_s: float, max_connections: int) -> type[OpenAIH11Protocol]:
    """The protocol class for uvicorn.Config(http=...), with these limits."""
    return type(
        "OpenAIH11Protocol",
        (OpenAIH11Protocol,),
        {"header_timeout_s": header_timeout_s, "max_connections": max_connections},
    )


def connection_cap(requested: int) -> int:
    """`requested`, or fewer when the open-files limit would run out first (with a warning): at
    the limit the server could not accept, so not close, anything, and every new client hangs."""
    try:
        import resource  # Unix only

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, ValueError, OSError):
        return requested
    spare = _RESERVED_FDS + LISTEN_BACKLOG
    room = requested if soft == resource.RLIM_INFINITY else max(1, soft - spare)
    if requested > room:
        _log.warning(
            "max_connections %d is more than the open-files limit (%d) leaves: using %d",
            requested,
            soft,
            room,
        )
        return room
    return requested


class _Server(uvicorn.Server):
    """uvicorn.Server that starts `on_shutdown` (in a thread) as soon as its shutdown begins."""

    def __init__(self, config: uvicorn.Config, on_shutdown: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_shutdown = on_shutdown

    async def shutdown(self, sockets: Any = None) -> None:
        threading.Thread(target=self._on_shutdown, name="pocketlm-drain", daemon=True).start()
        await super().shutdown(sockets)


def build_server(app: Any, *, log_level: str = "info") -> uvicorn.Server:
    """A uvicorn.Server for an app made by create_app, with the limits of its ServerSettings.

    At shutdown in-flight requests get settings.shutdown_timeout_s to finish; then the scheduler
    ends what is left, which the routes answer with a 503 body or a stream's error event.
    """
    settings = app.state.settings
    scheduler = app.state.scheduler
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        access_log=False,
        http=http_protocol(
            header_timeout_s=settings.header_timeout_s,
            max_connections=connection_cap(settings.max_connections),
        ),
        ws="none",  # no WebSocket routes: an Upgrade request is served as plain HTTP
        backlog=LISTEN_BACKLOG,
        proxy_headers=False,  # no proxy in front: X-Forwarded-* must not change scheme or client
        timeout_keep_alive=settings.idle_timeout_s,  # type: ignore[arg-type]  # a float works
        timeout_graceful_shutdown=settings.shutdown_timeout_s + SHUTDOWN_BACKSTOP_S,  # type: ignore[arg-type]
        lifespan="on",
    )

    def drain() -> None:
        scheduler.stop(drain=True, timeout=settings.shutdown_timeout_s)

    return _Server(config, drain)
