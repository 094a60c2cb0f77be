"""A tiny OpenAI-style chat-completions server for synth tests (stdlib http.server in a thread),
with scripted failures, and a clock whose sleeps only advance a counter.

A script maps (the request's last user text, the number of times that text was asked) to a
behaviour: "ok", "length" (ok, but finish_reason "length"), "429" (Retry-After: 7), "429-date" (Retry-After as an HTTP date, 3 s ahead),
"500", "400", "401", "echo401" (a 401 quoting the
Authorization header), "302", "notjson" (200 with a body that is not JSON), "truncated" (the
body cut short of its Content-Length), "hang" (no reply within the client's timeout).
"""

from __future__ import annotations

import email.utils
import json
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

WALL0 = 1_700_000_000.0  # FakeClock's wall time at now() == 0


class FakeClock:
    """now() and wall() advance only when sleep() is called (never, with advance=False); sleeps
    are recorded."""

    def __init__(self, advance: bool = True) -> None:
        self.advance = advance
        self.t = 0.0
        self.sleeps: list[float] = []
        self._lock = threading.Lock()

    def now(self) -> float:
        return self.t

    def wall(self) -> float:
        return WALL0 + self.t

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)
            self.t += max(0.0, seconds) if self.advance else 0.0


def default_answer(prompt: str) -> str:
    return f"An answer to: {prompt}"


class FakeTeacher:
    """The server; `requests` holds every request body and its headers, `asked` counts texts."""

    def __init__(
        self,
        script: Callable[[str, int], str] | None = None,
        answer: Callable[[str], str] = default_answer,
        hang_s: float = 1.0,
    ) -> None:
        self.script = script or (lambda text, n: "ok")
        self.answer = answer
        self.hang_s = hang_s
        self.requests: list[tuple[dict, dict]] = []
        self.asked: Counter = Counter()
        self._lock = threading.Lock()
        teacher = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length))
                teacher._serve(self, body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def __enter__(self) -> FakeTeacher:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def texts(self) -> list[str]:
        """The last user text of every request, in arrival order."""
        return [body["messages"][-1]["content"] for body, _ in self.requests]

    def _serve(self, h: BaseHTTPRequestHandler, body: dict) -> None:
        text = body["messages"][-1]["content"]
        with self._lock:
            self.requests.append((body, dict(h.headers)))
            self.asked[text] += 1
            n = self.asked[text]
        what = self.script(text, n)
        if what in ("ok", "length"):
            self._send(h, 200, self._completion(body, text, "stop" if what == "ok" else what))
        elif what == "429":
            self._send(h, 429, _error("slow down"), {"Retry-After": "7"})
        elif what == "429-date":
            when = email.utils.formatdate(WALL0 + 3, usegmt=True)
            self._send(h, 429, _error("slow down"), {"Retry-After": when})
        elif what in ("500", "400", "401"):
            self._send(h, int(what), _error(f"scripted {what}"))
        elif what == "echo401":  # a server that quotes the key it refused
            self._send(h, 401, _error(f"bad key {h.headers.get('Authorization')}"))
        elif what == "302":
            self._send(h, 302, b"", {"Location": "http://127.0.0.1:9/elsewhere"})
        elif what == "notjson":
            self._send(h, 200, b"<html>gateway</html>")
        elif what == "truncated":
            data = json.dumps(self._completion(body, text)).encode()
            h.send_response(200)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data[: len(data) // 2])
            h.wfile.flush()
            h.close_connection = True
        elif what == "hang":
            time.sleep(self.hang_s)
            h.close_connection = True
        else:
            raise AssertionError(f"unknown behaviour {what!r}")

    def _completion(self, body: dict, text: str, finish: str = "stop") -> dict:
        if text.startswith("Write ") and "requests that a user might send" in text:
            n = int(re.search(r"Write (\d+)", text).group(1))
            topic = re.search(r"about (.+?)\. Vary", text).group(1)
            content = "Here are the requests:\n" + "\n".join(
                f"{i}. Question {i} about {topic}?" for i in range(1, n + 1)
            )
        else:
            content = self.answer(text)
        words = content.split(" ")
        out = {
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "model": body.get("model") or "fake-teacher",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "logprobs": None,
                    "finish_reason": finish,
                }
            ],
            "usage": {
                "prompt_tokens": len(text.split()),
                "completion_tokens": len(words),
                "total_tokens": len(text.split()) + len(words),
            },
        }
        if body.get("logprobs"):
            k = body.get("top_logprobs") or 0
            out["choices"][0]["logprobs"] = {
                "content": [
                    {
                        "token": w,
                        "logprob": -0.5,
                        "bytes": list(w.encode()),
                        "top_logprobs": [
                            {"token": w, "logprob": -0.5, "bytes": list(w.encode())},
                            *[
                                {"token": f"alt{j}", "logprob": -2.0 - j, "bytes": None}
                                for j in range(k - 1)
                            ],
                        ][:k],
                    }
                    for w in words
                ],
                "refusal": None,
            }
        return out

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, status: int, payload, headers: dict | None = None) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)


def _error(message: str) -> dict:
    return {"error": {"message": message, "type": "test", "param": None, "code": None}}
