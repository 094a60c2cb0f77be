"""The OpenAI-compatible local server: FastAPI routes over one continuous-batching scheduler.

Routes: `/v1/models`, `/v1/completions`, `/v1/chat/completions` (SSE streaming or whole),
`/health`, `/metrics` (Prometheus text) and `/`, a small chat page. A classifier is served over a
ClassifyBatcher instead of the scheduler: it answers `/v1/classify` (serve/classify_routes.py)
and refuses the generation routes with a 400 saying so; a language model refuses /v1/classify. FastAPI and uvicorn are
optional (`pip install 'pocketlm[serve]'`) and imported lazily with an install hint.
"""

# No `from __future__ import annotations` here: FastAPI reads the endpoints' annotations at
# runtime, and `fastapi.Request` is only bound inside create_app (a lazy import).
import asyncio
import signal
import threading
import time
from collections.abc import Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from pocketlm.common.errors import ConfigError, require
from pocketlm.engine.classify_batcher import ClassifyBatcher
from pocketlm.engine.scheduler import BatchScheduler
from pocketlm.serve.openai_protocol import ProtocolError, error_body
from pocketlm.serve.served_models import (
    ServedModel,
    check_model_ids,
    combined_stats,
    pick,
    requested_model,
)
from pocketlm.tokenizer.tokenizer import Tokenizer

POST_ROUTES = ("/v1/completions", "/v1/chat/completions", "/v1/classify")  # JSON bodies only
ROUTES = ("/", "/health", "/metrics", "/v1/models", *POST_ROUTES)
DEFAULT_PUBLIC_PATHS = ("/health", "/")


@dataclass(frozen=True)
class ServerSettings:
    """How the server behaves: model id, address, key, who may call it, and its limits."""

    model_id: str  # the base model's id (adapters served on it have their own)
    default_model: str | None = None  # the id a request naming no model gets (None: model_id)
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    public_paths: tuple[str, ...] = DEFAULT_PUBLIC_PATHS
    allowed_hosts: tuple[str, ...] = ()  # Host names beyond the bound address and localhost
    cors_origins: tuple[str, ...] = ()  # foreign page origins that may call the server
    max_body_bytes: int = 1_000_000
    max_connections: int = 256  # open at once; past it the oldest idle one is closed
    idle_timeout_s: float = 5.0  # a connection with no request is closed after this
    header_timeout_s: float = 10.0  # from a request's first byte to the end of its head (408)
    body_timeout_s: float = 30.0  # from the end of the head to the end of the body (408)
    shutdown_timeout_s: float = 3.0  # grace for in-flight requests at shutdown, then 503
    retry_after_s: int = 1
    backend_name: str = ""

    def __post_init__(self) -> None:
        for name in ("idle_timeout_s", "header_timeout_s", "body_timeout_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        if not self.shutdown_timeout_s >= 0:
            raise ConfigError(f"shutdown_timeout_s must be >= 0, got {self.shutdown_timeout_s}")
        if self.max_connections < 1:
            raise ConfigError(f"max_connections must be >= 1, got {self.max_connections}")


def _fastapi():
    return require("fastapi", "serve", "pocketlm serve")


def create_app(
    scheduler: BatchScheduler | ClassifyBatcher,
    tokenizer: Tokenizer,
    settings: ServerSettings,
    *,
    adapters: Sequence[ServedModel] = (),
) -> Any:
    """The ASGI app for the base model (`scheduler`, named settings.model_id) and the adapters
    served on it (each its own scheduler); a request's `model` picks one. A ClassifyBatcher
    serves a classifier (alone: no adapters). Its lifespan starts the schedulers and stops them
    (cancelling work) at shutdown."""
    fastapi = _fastapi()
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.responses import HTMLResponse, JSONResponse, Response

    from pocketlm.serve.chat_page import CHAT_PAGE_HTML
    from pocketlm.serve.classify_routes import ClassifyRoutes
    from pocketlm.serve.metrics import CONTENT_TYPE, ServerMetrics
    from pocketlm.serve.middleware import (
        ApiKeyMiddleware,
        BodyLimitMiddleware,
        ErrorGuardMiddleware,
        JsonContentTypeMiddleware,
        MetricsMiddleware,
    )
    from pocketlm.serve.origin_guard import AccessPolicy, OriginGuardMiddleware
    from pocketlm.serve.routes import GenerationRoutes

    policy = AccessPolicy.build(settings.host, settings.allowed_hosts, settings.cors_origins)
    metrics = ServerMetrics(ROUTES)
    created = int(time.time())
    check_model_ids([settings.model_id, *(a.model_id for a in adapters)])
    if isinstance(scheduler, ClassifyBatcher):
        if adapters:
            raise ConfigError("a classifier is served alone: no adapters next to it")
        base = ClassifyRoutes(scheduler, tokenizer, settings, metrics, created)
    else:
        base = GenerationRoutes(scheduler, tokenizer, settings, metrics, created)
    served = {settings.model_id: base}
    for a in adapters:
        served[a.model_id] = GenerationRoutes(
            a.scheduler,
            a.tokenizer,
            settings,
            metrics,
            created,
            model_id=a.model_id,
            parent=a.parent or settings.model_id,
            adapter=a.adapter,
        )
    default = settings.default_model or settings.model_id
    if default not in served:
        raise ConfigError(f"the default model {default!r} is not served: {', '.join(served)}")
    # one scheduler per model, or one shared by the base and the adapters it mixes in a batch
    schedulers = list({id(r.scheduler): r.scheduler for r in served.values()}.values())
    listed = [served[default], *(r for name, r in served.items() if name != default)]

    def stats():
        return combined_stats([s.stats() for s in schedulers])

    async def routes_for(request) -> GenerationRoutes | ClassifyRoutes:
        # One model: any name is answered (clients often send a fixed one); several: by name.
        name = requested_model(await request.body())
        return pick(served, default, name, strict=len(served) > 1)

    @asynccontextmanager
    async def lifespan(app):
        for s in schedulers:
            s.start()
        try:
            yield
        finally:
            for s in schedulers:
                await asyncio.to_thread(s.stop, drain=False, timeout=5.0)

    app = fastapi.FastAPI(
        title="PocketLM",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        lifespan=lifespan,
        # no 307 with an empty body for a path missing its slash (or an empty path): a JSON 404
        redirect_slashes=False,
    )
    app.state.metrics = metrics
    app.state.scheduler = scheduler  # the base model's
    app.state.settings = settings

    def error(status: int, body: dict, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse(body, status_code=status, headers=headers)

    @app.exception_handler(ProtocolError)
    async def protocol_error(request, exc: ProtocolError):
        return error(exc.status, exc.body(), exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc):
        path = request.scope["path"]  # not request.url: that parses the Host header
        code = {404: "unknown_url", 405: "method_not_allowed"}.get(exc.status_code)
        message = {
            404: f"unknown URL {path}: see /v1/models, /v1/completions, /v1/chat/completions, "
            "/v1/classify",
            405: f"method {request.method} is not allowed on {path}",
        }.get(exc.status_code, str(exc.detail))
        return error(exc.status_code, error_body(message, code=code), getattr(exc, "headers", None))

    @app.get("/")
    async def page():
        # no other site may frame the page (clickjacking a keyless local server)
        return HTMLResponse(
            CHAT_PAGE_HTML,
            headers={
                "X-Frame-Options": "DENY",
                "Content-Security-Policy": "frame-ancestors 'none'",
            },
        )

    @app.get("/health")
    async def health():
        now = stats()
        body = {
            "status": "ok" if now.running else "unavailable",
            "model": default,
            "models": list(served) if len(served) > 1 else [default],
            "backend": settings.backend_name,
            "context_length": scheduler.context_length,
            "slots": now.slots,
            "active": now.active,
            "queued": now.queued,
        }
        return JSONResponse(body, status_code=200 if now.running else 503)

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.render(stats()), media_type=CONTENT_TYPE)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [r.model_card() for r in listed]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str):
        return pick(served, default, model_id, strict=True).model_card()

    @app.post("/v1/completions")
    async def completions(request: fastapi.Request):
        return await (await routes_for(request)).completions(request)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: fastapi.Request):
        return await (await routes_for(request)).chat_completions(request)

    @app.post("/v1/classify")
    async def classify(request: fastapi.Request):
        return await (await routes_for(request)).classify(request)

    # Outermost first (added last): count everything, answer whatever happens, refuse other
    # hosts and foreign pages, check the key, refuse bodies that are not JSON, cap the body.
    app.add_middleware(
        BodyLimitMiddleware, max_bytes=settings.max_body_bytes, timeout_s=settings.body_timeout_s
    )
    app.add_middleware(JsonContentTypeMiddleware, paths=POST_ROUTES)
    if settings.api_key:
        app.add_middleware(
            ApiKeyMiddleware, api_key=settings.api_key, public_paths=settings.public_paths
        )
    app.add_middleware(OriginGuardMiddleware, policy=policy)
    app.add_middleware(ErrorGuardMiddleware)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app


def run_server(app: Any, *, log_level: str = "info") -> None:
    """Serve an app made by create_app until SIGINT/SIGTERM (see http_server.build_server)."""
    require("uvicorn", "serve", "pocketlm serve")
    from pocketlm.serve.http_server import build_server

    server = build_server(app, log_level=log_level)
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal under the
    # handler that was there before: make that a no-op, so a stopped server exits with status 0.
    quiet = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.signal(sig, _ignore) for sig in _STOP_SIGNALS} if quiet else {}
    try:
        server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _ignore(signum: int, frame: object) -> None:
    """A signal handler that does nothing (the server already stopped)."""
