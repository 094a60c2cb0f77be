"""The teacher's chat-completions endpoint over the standard library: one POST, retried.

urllib in the caller's thread (no new dependency). Redirects are refused, not followed, so the
API key is only ever sent to the URL the user named; loopback URLs bypass any proxy settings.
The key goes into the Authorization header and nowhere else: it is in no error, log or repr.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import random
import threading
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field, replace
from typing import Any

from pocketlm.common.errors import ConfigError
from pocketlm.data.synth.backoff import FATAL_STATUS, RetryPolicy, is_retryable, parse_retry_after
from pocketlm.data.synth.clock import Clock, SystemClock
from pocketlm.data.synth.rate_limit import RateLimiter

_PATH = "/chat/completions"
_MAX_ERROR_CHARS = 300


def endpoint_url(url: str) -> str:
    """The chat-completions URL for a server root, its /v1 or the full endpoint."""
    parsed = urllib.parse.urlsplit(url.strip())
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ConfigError(
            f"--teacher-url {public_url(url)!r} is not an http(s) URL "
            "(e.g. http://127.0.0.1:8000 or https://api.openai.com/v1)"
        )
    path = parsed.path.rstrip("/")
    if not path.endswith(_PATH):
        path += _PATH if path.endswith("/v1") else "/v1" + _PATH
    return urllib.parse.urlunsplit((parsed.scheme, parsed.netloc, path, parsed.query, ""))


def public_url(url: str) -> str:
    """The URL without user, password or query (which may hold a key): safe to log and record."""
    parsed = urllib.parse.urlsplit(url.strip())
    host = parsed.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parsed.port}" if _port(parsed) else "")
    return urllib.parse.urlunsplit((parsed.scheme, netloc, parsed.path, "", ""))


def _port(parsed: urllib.parse.SplitResult) -> int | None:
    try:
        return parsed.port
    except ValueError:
        return None


@dataclass(frozen=True)
class HttpReply:
    """What one POST got: the status (0: no response), the body, Retry-After and an error."""

    status: int
    body: bytes = b""
    retry_after: str | None = None
    error: str = ""  # why it failed ('' on a 2xx)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None  # urllib then raises HTTPError with the 3xx


def _opener(url: str) -> urllib.request.OpenerDirector:
    handlers: list[urllib.request.BaseHandler] = [_NoRedirect()]
    if _is_loopback(urllib.parse.urlsplit(url).hostname or ""):
        handlers.append(urllib.request.ProxyHandler({}))  # a local server is never proxied
    return urllib.request.build_opener(*handlers)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def post_json(
    opener: urllib.request.OpenerDirector, url: str, body: bytes, headers: dict, timeout_s: float
) -> HttpReply:
    """POST `body` and read the whole reply; never raises for HTTP or connection failures."""
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with opener.open(request, timeout=timeout_s) as response:
            return HttpReply(response.status, response.read(), response.headers.get("Retry-After"))
    except urllib.error.HTTPError as exc:
        try:
            data = exc.read()
        except (OSError, http.client.HTTPException):
            data = b""
        where = f" to {exc.headers.get('Location')}" if 300 <= exc.code < 400 else ""
        message = f"HTTP {exc.code}{where}: {_error_text(data)}"
        return HttpReply(exc.code, data, exc.headers.get("Retry-After"), message)
    except urllib.error.URLError as exc:
        return HttpReply(0, error=f"connection error: {exc.reason}")
    except (http.client.HTTPException, OSError) as exc:  # timeouts, resets, truncated bodies
        return HttpReply(0, error=f"connection error: {type(exc).__name__}: {exc}")


def _error_text(body: bytes) -> str:
    """The message of an OpenAI-style error body, else its start."""
    text = body.decode("utf-8", "replace")
    try:
        data = json.loads(text)
        message = data["error"]["message"] if isinstance(data["error"], dict) else data["error"]
        text = str(message)
    except (ValueError, KeyError, TypeError):
        pass
    text = " ".join(text.split())
    return text[:_MAX_ERROR_CHARS] or "(empty body)"


@dataclass(frozen=True)
class Exchange:
    """The end of one request after its retries: the parsed reply, or why there is none."""

    data: dict[str, Any] | None
    attempts: int  # HTTP requests sent
    error: str = ""
    fatal: bool = False  # no later request can succeed either (401, 403, 404, a redirect)
    cancelled: bool = False  # the run stopped while this request waited

    @property
    def retries(self) -> int:
        return max(0, self.attempts - 1)


@dataclass
class ChatClient:
    """POSTs chat-completions requests with retries, backoff and a shared rate limit."""

    url: str  # the endpoint (endpoint_url)
    api_key: str | None = field(default=None, repr=False)
    timeout_s: float = 120.0
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    limiter: RateLimiter | None = None
    clock: Clock = field(default_factory=SystemClock)
    rng: random.Random = field(default_factory=random.Random)
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._opener = _opener(self.url)

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def complete(self, payload: dict[str, Any]) -> Exchange:
        """Send one request until it succeeds, fails for good or runs out of retries."""
        exchange = self._complete(json.dumps(payload, ensure_ascii=False).encode("utf-8"))
        if self.api_key and self.api_key in exchange.error:  # a server that echoes the key
            return replace(exchange, error=exchange.error.replace(self.api_key, "[API key]"))
        return exchange

    def _complete(self, body: bytes) -> Exchange:
        error = ""
        for attempt in range(self.policy.max_retries + 1):
            if self.limiter is not None and not self.stop.is_set():
                self.limiter.acquire()
            if self.stop.is_set():
                return Exchange(None, attempt, "stopped", cancelled=True)
            reply = post_json(self._opener, self.url, body, self._headers(), self.timeout_s)
            if 200 <= reply.status < 300:
                try:
                    data = json.loads(reply.body)
                except (ValueError, RecursionError):
                    error = f"HTTP {reply.status} with a body that is not JSON (truncated?)"
                else:
                    if isinstance(data, dict):
                        return Exchange(data, attempt + 1)
                    return Exchange(None, attempt + 1, "the reply is JSON but not an object")
            else:
                error = reply.error
                if reply.status in FATAL_STATUS or 300 <= reply.status < 400:
                    return Exchange(None, attempt + 1, error, fatal=True)
                if not is_retryable(reply.status):
                    return Exchange(None, attempt + 1, error)
            if attempt == self.policy.max_retries:
                break
            retry_after = parse_retry_after(reply.retry_after, self.clock.wall())
            self.clock.sleep(self.policy.delay(attempt, retry_after, self.rng))
        return Exchange(None, self.policy.max_retries + 1, f"gave up after retries: {error}")
