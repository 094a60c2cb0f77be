"""Who may call the server: the Host a request names and the Origin of the web page behind it.

Any web page can send requests to a server on the user's machine: a cross-origin POST with a
"simple" content type (text/plain) goes out without asking first, and DNS rebinding (the page's
own name made to resolve to 127.0.0.1) even lets the page read the answer. Two checks stop both.
The Host header must name this server: the address it is bound to, localhost, 127.0.0.1, [::1]
(any port), or a name added with --allow-host; a rebound name is none of these. On every
interface (0.0.0.0, ::) any IP address is accepted too, since DNS rebinding needs a name. And a
request from a page (an Origin header) must come from the server's own origin (its chat page)
or from an origin given with --cors-origin, which also get CORS headers and preflight answers.
Requests without an Origin (curl, SDKs) pass: browsers send one with every cross-origin request
and every POST.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

from pocketlm.common.errors import ConfigError
from pocketlm.serve.middleware import ASGIApp, Message, Receive, Scope, Send, header, send_error

LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")
EVERY_INTERFACE = ("0.0.0.0", "::", "")
ANY = "*"
_PORT = re.compile(r"[0-9]{1,5}")
_ORIGIN = re.compile(r"(https?)://([^/?#@\s]+)")
_HEADER_LIST = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~, -]{0,1000}")  # tokens, commas, spaces
_PREFLIGHT_MAX_AGE_S = 600


def host_name(value: str) -> str | None:
    """The name in a Host value ('name', 'name:port', '[v6]:port'), lowercased and without a
    trailing dot; None when the value is malformed."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        name, rest = value[1:end], value[end + 1 :]
        if end < 0 or not name:
            return None
    else:
        name, colon, port = value.partition(":")
        rest = colon + port
    if rest and not (rest.startswith(":") and _PORT.fullmatch(rest[1:])):
        return None
    name = name.removesuffix(".")
    return name if name and " " not in name else None


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _allowed_name(value: str) -> str:
    """An --allow-host value as host_name gives it; ConfigError when it is not a bare name."""
    name = value.strip().lower()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    if name == ANY or _is_ip(name):
        return name
    name = name.removesuffix(".")
    if not name or any(c in name for c in ":/@?# \t"):
        raise ConfigError(
            f"--allow-host {value!r} is not a host name: give a name or address without scheme, "
            "port or path (e.g. myhost.local, 192.168.1.5), or * for any"
        )
    return name


def normalize_origin(value: str) -> str:
    """An origin as browsers send it ('http://host:port', lowercase); ConfigError otherwise."""
    origin = value.strip().lower().removesuffix("/")
    match = _ORIGIN.fullmatch(origin)
    if origin == ANY:
        return origin
    if match is None or host_name(match.group(2)) is None:
        raise ConfigError(
            f"--cors-origin {value!r} is not an origin: give scheme://host[:port] such as "
            "http://localhost:3000 (no path), or * for any"
        )
    return origin


@dataclass(frozen=True)
class AccessPolicy:
    """The host names the server answers to and the foreign origins it serves (CORS)."""

    hosts: frozenset[str]
    any_ip: bool = False  # bound to every interface: any IP address literal is this machine
    cors_origins: frozenset[str] = frozenset()

    @classmethod
    def build(
        cls, bind_host: str, allow_hosts: Iterable[str] = (), cors_origins: Iterable[str] = ()
    ) -> AccessPolicy:
        """The policy for a server bound to `bind_host`, with extra names and CORS origins."""
        hosts = set(LOCAL_NAMES)
        if bind_host not in EVERY_INTERFACE:
            hosts.add(bind_host.strip("[]").lower())
        hosts.update(_allowed_name(value) for value in allow_hosts)
        origins = frozenset(normalize_origin(o) for o in cors_origins)
        return cls(frozenset(hosts), bind_host in EVERY_INTERFACE, origins)

    def host_allowed(self, name: str) -> bool:
        """True when a request naming host `name` is for this server."""
        return ANY in self.hosts or name in self.hosts or (self.any_ip and _is_ip(name))

    def cors_allowed(self, origin: str) -> bool:
        """True when pages from `origin` may use the server (--cors-origin)."""
        return ANY in self.cors_origins or origin in self.cors_origins

    def describe_hosts(self) -> str:
        """The accepted names, for error messages."""
        names = sorted(f"[{h}]" if ":" in h else h for h in self.hosts)
        return ", ".join(names) + (" or any IP address" if self.any_ip else "")


def _shown(value: str) -> str:
    return value if len(value) <= 100 else value[:100] + "..."


class OriginGuardMiddleware:
    """Refuses requests for another host or from a foreign page (403); serves CORS origins."""

    def __init__(self, app: ASGIApp, policy: AccessPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host = header(scope, b"host")  # absent only in HTTP/1.0, which no browser sends
        if host is not None:
            name = host_name(host)
            if name is None or not self.policy.host_allowed(name):
                await send_error(
                    send,
                    403,
                    f"the Host header {_shown(host)!r} does not name this server (it answers to "
                    f"{self.policy.describe_hosts()}); start it with --allow-host NAME to add one",
                    code="host_not_allowed",
                )
                return
        given = header(scope, b"origin")
        origin = None if given is None else given.strip().lower()
        if origin is None or (
            host is not None and origin == f"{scope['scheme']}://{host.strip().lower()}"
        ):
            await self.app(scope, receive, send)  # not from a page, or from this server's page
            return
        if not self.policy.cors_allowed(origin):
            await send_error(
                send,
                403,
                f"cross-origin request from {_shown(given)!r} refused: start the server with "
                "--cors-origin ORIGIN to let pages from that origin use it",
                code="origin_not_allowed",
            )
            return
        echoed = given.strip().encode("latin-1")  # header text came from latin-1 bytes
        cors = [(b"access-control-allow-origin", echoed), (b"vary", b"Origin")]
        wanted = header(scope, b"access-control-request-method")
        if scope["method"] == "OPTIONS" and wanted is not None:
            await self._preflight(scope, send, cors)
            return

        async def with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), *cors]}
            await send(message)

        await self.app(scope, receive, with_cors)

    @staticmethod
    async def _preflight(scope: Scope, send: Send, cors: list[tuple[bytes, bytes]]) -> None:
        asked = header(scope, b"access-control-request-headers") or ""
        allowed = (
            asked if _HEADER_LIST.fullmatch(asked) and asked else "authorization, content-type"
        )
        headers = [
            *cors,
            (b"access-control-allow-methods", b"GET, POST, OPTIONS"),
            (b"access-control-allow-headers", allowed.encode("latin-1")),
            (b"access-control-max-age", str(_PREFLIGHT_MAX_AGE_S).encode()),
            (b"content-length", b"0"),
        ]
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
