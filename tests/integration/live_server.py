"""Helpers for server tests: a live uvicorn server on 127.0.0.1 in a thread, and a slow backend.

`SlowBackend` wraps a real backend, sleeps on every decode step and never lets
the model end a reply early (eos and end-of-turn get a very low logit), so a test can hold a
slot, disconnect mid-stream or interrupt a reply at a known moment.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mask(logits: np.ndarray, stop_ids: Sequence[int]) -> np.ndarray:
    out = np.array(logits, dtype=np.float32, copy=True)
    out[..., list(stop_ids)] = -1e9
    return out


class SlowBackend:
    """A Backend wrapper that sleeps `delay_s` per decode step and never emits the banned
    tokens (the stop tokens, and more if asked)."""

    def __init__(self, inner, stop_ids: Sequence[int], delay_s: float) -> None:
        self.inner = inner
        self.stop_ids = list(stop_ids)
        self.delay_s = delay_s
        self.name = f"slow-{inner.name}"

    slots = property(lambda self: self.inner.slots)
    context_length = property(lambda self: self.inner.context_length)
    vocab_size = property(lambda self: self.inner.vocab_size)
    device = property(lambda self: self.inner.device)
    prefill_chunk = property(lambda self: self.inner.prefill_chunk)

    def position(self, slot: int) -> int:
        return self.inner.position(slot)

    def prefill(self, slot: int, token_ids) -> np.ndarray:
        return _mask(self.inner.prefill(slot, token_ids), self.stop_ids)

    def decode(self, slots, token_ids) -> np.ndarray:
        time.sleep(self.delay_s)
        return _mask(self.inner.decode(slots, token_ids), self.stop_ids)

    def extend(self, slot: int, token_ids) -> np.ndarray:
        return _mask(self.inner.extend(slot, token_ids), self.stop_ids)

    def truncate(self, slot: int, position: int) -> None:
        self.inner.truncate(slot, position)

    def release(self, slot: int) -> None:
        self.inner.release(slot)


def make_scheduler(
    model_dir: Path,
    *,
    slots: int = 4,
    max_queue: int = 32,
    delay_s: float = 0.0,
    backend: str = "auto",
    visible_only: bool = False,
):
    """A BatchScheduler over the model (optionally slowed down) and its tokenizer.

    visible_only: the model never picks a token whose text is only whitespace (a tiny test
    model's greedy reply can be all newlines, which a browser shows as nothing).
    """
    from pocketlm.engine.load import open_backend
    from pocketlm.engine.scheduler import BatchScheduler

    opened, tokenizer = open_backend(model_dir, slots=slots, backend=backend, threads=1)
    if delay_s or visible_only:
        banned = [tokenizer.eos_id, tokenizer.end_of_turn_id]
        if visible_only:
            banned += [
                i
                for i in range(tokenizer.vocab_size)
                if i not in tokenizer.special_ids and not tokenizer.decode([i]).strip()
            ]
        opened = SlowBackend(opened, banned, delay_s)
    return BatchScheduler(opened, tokenizer, max_queue=max_queue), tokenizer


class LiveServer:
    """The server for an app made by create_app (build_server: its real protocol and limits), run
    in a background thread on 127.0.0.1."""

    def __init__(self, app) -> None:
        from pocketlm.serve.http_server import build_server

        settings = app.state.settings
        self.port = settings.port
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = build_server(app, log_level="warning")
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self, timeout_s: float = 30.0) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout_s)


@contextlib.contextmanager
def live_server(scheduler, tokenizer, adapters=(), **settings) -> Iterator[LiveServer]:
    """Serve a scheduler (and `adapters`, ServedModels) with create_app(ServerSettings(**settings))
    on 127.0.0.1 and a free port for the duration of the block."""
    from pocketlm.serve.app import ServerSettings, create_app

    settings.setdefault("model_id", "tiny")
    settings.setdefault("port", free_port())
    settings.setdefault("shutdown_timeout_s", 2.0)
    app = create_app(
        scheduler, tokenizer, ServerSettings(host="127.0.0.1", **settings), adapters=adapters
    )
    server = LiveServer(app).start()
    try:
        yield server
    finally:
        server.stop()


def wait_until(predicate, timeout_s: float = 5.0, step_s: float = 0.02) -> bool:
    """Poll predicate until it is true (True) or the time is up (False)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step_s)
    return bool(predicate())


@dataclass(frozen=True)
class RawResponse:
    """An HTTP response read off a raw socket."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body)


def read_until_closed(sock: socket.socket, timeout_s: float) -> bytes:
    """Everything the server sends until it closes the connection (or timeout_s passes)."""
    deadline = time.monotonic() + timeout_s
    chunks = []
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def parse_response(raw: bytes, method: str = "GET") -> RawResponse | None:
    """The (last, after any 1xx) response in raw bytes; None when there is none."""
    import h11

    if not raw:
        return None
    conn = h11.Connection(h11.CLIENT)
    conn.send(
        h11.Request(
            method="HEAD" if method == "HEAD" else "GET", target="/", headers=[("Host", "x")]
        )
    )
    conn.send(h11.EndOfMessage())
    conn.receive_data(raw)
    conn.receive_data(b"")
    status, headers, body = None, {}, b""
    while True:
        event = conn.next_event()
        if isinstance(event, h11.Response):
            status = event.status_code
            headers = {k.decode().lower(): v.decode("latin-1") for k, v in event.headers}
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.InformationalResponse):
            continue
        else:  # EndOfMessage, ConnectionClosed
            break
    return None if status is None else RawResponse(status, headers, body)


def raw_request(port: int, data: bytes, *, method: str = "GET", timeout_s: float = 10.0):
    """Send raw bytes to 127.0.0.1:port; the response read until the server closes, or None."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(data)
        return parse_response(read_until_closed(sock, timeout_s), method)
