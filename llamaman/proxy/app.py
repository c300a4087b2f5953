"""The proxy as an app: every client-facing surface (Ollama, OpenAI, Anthropic, llama-server's own,
router-mode management) on one port, served by a uvicorn that runs inside LlamaMan's event loop."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import socket
from collections.abc import Awaitable, Callable, Generator, Mapping
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from llamaman import __version__
from llamaman.api.telemetry import metrics_router
from llamaman.auth.access import Surface
from llamaman.gateway.errors import install_error_handlers
from llamaman.gateway.middleware import wrap_with_auth
from llamaman.proxy import anthropic, manage, native, openai, pull
from llamaman.proxy.common import ProxyError, render_proxy_error
from llamaman.proxy.fast_lane import FastLane
from llamaman.services import Services
from llamaman.upstream.answers import error_payload
from llamaman.upstream.inflight import CUT_OFF
from llamaman.upstream.relay import ErrorStyle
from llamaman.upstream.responses import RAW_SEND

log = logging.getLogger(__name__)


def _ollama_module() -> Any:
    try:
        return importlib.import_module("llamaman.proxy.ollama")
    except ModuleNotFoundError as exc:
        if exc.name != "llamaman.proxy.ollama":
            raise  # a broken import inside the module must not pass for "not there"
        log.warning("the Ollama API surface (llamaman.proxy.ollama) is not available")
        return None


def _ollama_routers(include_root: bool) -> list[APIRouter]:
    ollama = _ollama_module()
    if ollama is None:
        return []
    routers: list[APIRouter] = [ollama.router]
    if include_root:
        routers.append(ollama.root_router)
    return routers


def build_proxy_router(*, include_root: bool) -> APIRouter:
    """All proxy routes. Order matters: ``/v1/messages`` and the native ``/v1/rerank`` come before
    the OpenAI surface's catch-all ``POST /v1/{path}``."""
    combined = APIRouter()
    subs = (
        *_ollama_routers(include_root),
        pull.router,
        anthropic.router,
        native.router,
        manage.router,
        openai.router,
    )
    for sub in subs:
        combined.include_router(sub)
    return combined


def error_style(path: str) -> ErrorStyle:
    if path.startswith("/api/"):
        return "ollama"
    if path.startswith("/v1/messages"):
        return "anthropic"
    return "openai"


def install_proxy_error_handler(app: FastAPI) -> None:
    @app.exception_handler(ProxyError)
    async def _proxy_error(request: Request, exc: ProxyError) -> Response:
        return render_proxy_error(exc, error_style(request.url.path))


Handler = Callable[[Request], Awaitable[Response]]


class FastRoutes:
    """The hottest POST routes, answered without FastAPI's router, dependency solving and
    exception-middleware layers (about a tenth of a millisecond a request on a small CPU).

    It sits inside the auth middleware, so every check still runs; the handlers are the very
    functions FastAPI would call for these paths (``test_fast_routes`` holds that), and their
    exceptions get the app's own exception handlers.
    """

    def __init__(
        self, app: ASGIApp, routes: Mapping[str, Handler], exception_handlers: Mapping[Any, Any]
    ) -> None:
        self.app = app
        self.routes = dict(routes)
        self.exception_handlers = exception_handlers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = self.routes.get(scope["path"]) if scope["type"] == "http" else None
        if handler is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        try:
            response = await handler(request)
        except ProxyError as exc:
            response = render_proxy_error(exc, error_style(scope["path"]))
        except Exception as exc:
            answer = self._handler_for(exc)
            if answer is None:
                raise
            response = await answer(request, exc)
        await response(scope, receive, send)

    def _handler_for(self, exc: Exception) -> Any:
        for cls in type(exc).__mro__:
            if cls in self.exception_handlers:
                return self.exception_handlers[cls]
        return None


def _fast_routes() -> dict[str, Handler]:
    routes: dict[str, Handler] = {
        "/v1/chat/completions": openai.chat_completions,
        "/v1/completions": openai.completions,
        "/v1/embeddings": openai.embeddings,
        "/v1/messages": anthropic.messages,
    }
    ollama = _ollama_module()
    if ollama is not None:
        routes["/api/chat"] = ollama.ollama_chat
        routes["/api/generate"] = ollama.ollama_generate
        routes["/api/embed"] = ollama.ollama_embed
        routes["/api/embeddings"] = ollama.ollama_embeddings
    return routes


FAST_ROUTES = _fast_routes()
# Their request targets, as the main port's protocol compares them (``main_port_models``).
MODEL_TARGETS = frozenset(path.encode() for path in FAST_ROUTES)


def create_proxy_app(services: Services, surface: Surface = "proxy") -> FastAPI:
    """The app on the proxy port: no UI, its ``/`` answers like Ollama's. ``surface="main"``: the
    same app guarded as the main port (the session cookie counts), for ``main_port_models``."""
    app = FastAPI(
        title="LlamaMan proxy", version=__version__, docs_url=None, redoc_url=None, openapi_url=None
    )
    app.state.services = services
    install_error_handlers(app)
    install_proxy_error_handler(app)

    @app.get("/health", include_in_schema=False)
    async def health() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    app.include_router(metrics_router)  # Prometheus may scrape the proxy port as well as the main one
    app.include_router(build_proxy_router(include_root=True))
    # Added before the auth middleware, so it runs inside it.
    app.add_middleware(FastRoutes, routes=FAST_ROUTES, exception_handlers=app.exception_handlers)
    wrap_with_auth(app, services, surface)
    return app


def main_port_models(services: Services) -> ASGIApp:
    """Where the main port sends a model request (a POST to one of ``FAST_ROUTES``) that carries no
    cookie: the proxy's app, guarded as the main port and served as the proxy port serves it,
    instead of the UI's app, whose layers (NiceGUI's middleware, sessions, gzip, the router over
    every page) cost milliseconds a request and add nothing to a model request."""
    return _front(create_proxy_app(services, surface="main"))


# ---- serving -----------------------------------------------------------------------------------
def _quiet_protocol(lane: FastLane | None) -> Any:
    """The guarded httptools protocol (header size and read-time limits) with the access log off
    for this server only, with ``lane`` in front when given."""
    if lane is not None:
        from llamaman.proxy.fast_protocol import lane_protocol

        return lane_protocol(lane)
    from llamaman.gateway.http_protocol import QuietProtocol

    return QuietProtocol


def _make_server(
    app: ASGIApp, host: str, port: int, lane: FastLane | None = None, protocol: Any = None
) -> Any:
    import uvicorn

    class _Config(uvicorn.Config):
        def configure_logging(self) -> None:
            # uvicorn's version reconfigures process-wide loggers (shared with the UI's server).
            pass

    from llamaman.gateway.server_clock import SharedClock

    class _Server(SharedClock, uvicorn.Server):  # type: ignore[misc]
        # The host application owns the signals; this server stops when told to. Ticked by the
        # process' one shared clock: the proxy and every instance listener would otherwise each wake
        # the idle process ten times a second.
        @contextlib.contextmanager
        def capture_signals(self) -> Generator[None, None, None]:
            yield

        def install_signal_handlers(self) -> None:  # uvicorn < 0.29
            pass

    config = _Config(
        app,
        host=host,
        port=port,
        http=protocol or _quiet_protocol(lane),
        ws="none",
        lifespan="off",
        log_config=None,
        log_level="warning",
        access_log=False,
        timeout_keep_alive=30,
        timeout_graceful_shutdown=5,
        proxy_headers=False,  # forwarded headers are trusted from LLAMAMAN_TRUSTED_PROXIES only
    )
    return _Server(config)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must say TCP: asyncio only sets TCP_NODELAY on accepted sockets that do, and without it
    # Nagle's algorithm adds ~40 ms to every small response.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host, port))
        sock.listen(2048)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise OSError(
            exc.errno,
            f"cannot listen on {host}:{port} for the proxy ({exc.strerror or exc}); is another program "
            "using the port? Set LLAMAMAN_PROXY_PORT to a free one, or to 0 to turn the proxy off",
        ) from exc
    return sock


def _front(app: ASGIApp) -> ASGIApp:
    """``app`` as served: a FastAPI app without a configured OpenTelemetry provider goes straight to
    its middleware stack, skipping FastAPI's per-request check for one (a measurable share of the
    proxy's own cost). With a provider, the app is served as it is, traced as usual."""
    telemetry = getattr(app, "_native_telemetry", None)
    if not isinstance(app, Starlette) or (telemetry is not None and telemetry.enabled()):
        return app
    root_path = app.root_path if isinstance(app, FastAPI) else ""
    lean: list[ASGIApp] = []

    async def front(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        if not lean:
            lean.append(_lean_stack(app))
        stack = lean[0]
        if root_path:
            scope["root_path"] = root_path
        scope["app"] = app
        scope[RAW_SEND] = send
        try:
            await stack(scope, receive, send)
        except asyncio.CancelledError:
            # The server stopping cancels what still runs once its grace is over: the client is told
            # why, in its dialect, as on the fast lane (an answer already begun just ends: the send
            # of a second start is refused).
            with contextlib.suppress(Exception):
                await _send_cut_off(scope["path"], send)
            raise

    return front


async def _send_cut_off(path: str, send: Send) -> None:
    body = json.dumps(error_payload(error_style(path), CUT_OFF, 503)).encode()
    headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _lean_stack(app: Starlette) -> ASGIApp:
    """The app's own middleware stack without the two layers FastAPI adds that have nothing to do
    here: exception telemetry (no provider is set up) and the app-wide body limit (none is set; the
    body guard inside enforces LlamaMan's). Each is a coroutine frame and a wrapped ``send`` on
    every request and every streamed chunk."""
    stack = app.middleware_stack = app.middleware_stack or app.build_middleware_stack()
    if not isinstance(app, FastAPI) or app.max_body_size is not None:
        return stack
    from fastapi._body_limit import AppBodyLimitMiddleware
    from fastapi.telemetry._asgi import ExceptionTelemetryMiddleware
    from starlette.middleware.errors import ServerErrorMiddleware

    if not isinstance(stack, ServerErrorMiddleware):
        return stack
    inner = stack.app
    while isinstance(inner, ExceptionTelemetryMiddleware | AppBodyLimitMiddleware):
        inner = inner.app
    return ServerErrorMiddleware(inner, handler=stack.handler, debug=stack.debug)


class ProxyServer:
    """A uvicorn server for ``app`` on (host, port), run as a task of the current event loop;
    ``lane`` answers the plainest model requests before they reach ``app`` (see ``fast_lane``).
    ``protocol``: the HTTP protocol class to serve with instead (the main port's, in tests)."""

    def __init__(
        self, app: ASGIApp, host: str, port: int, lane: FastLane | None = None, protocol: Any = None
    ) -> None:
        self.app = app
        self.lane = lane
        self.protocol = protocol
        self.host = host
        self.requested_port = port
        self.port = port
        self.server: Any = None
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def url(self) -> str:
        host = self.host
        if host in ("0.0.0.0", "", "::"):
            host = "127.0.0.1"
        elif ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        """Listen (port 0 picks a free one, see ``.port``); raises OSError when the port is taken."""
        if self.running:
            return
        sock = _bind(self.host, self.requested_port)
        self.port = sock.getsockname()[1]
        front = _front(self.app)
        # Traced requests keep every layer, so their traces show them.
        lane = self.lane if front is not self.app else None
        self.server = _make_server(front, self.host, self.port, lane, self.protocol)
        self._task = asyncio.create_task(self.server.serve(sockets=[sock]), name=f"proxy-server-{self.port}")
        while not self.server.started:
            if self._task.done():
                sock.close()
                exc = self._task.exception()
                raise OSError(f"the proxy server on {self.host}:{self.port} did not start: {exc!r}")
            await asyncio.sleep(0.005)
        log.info("proxy listening on %s", self.url)

    async def _shutdown(self) -> None:
        """uvicorn's own shutdown, minus its waits: it notices ``should_exit`` on a 0.1 s tick and
        then sleeps another 0.1 s; an instance listener closes on every model swap, which waits."""
        server = self.server
        state = server.server_state
        for s in server.servers:
            s.close()
        for connection in list(state.connections):
            connection.shutdown()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + server.config.timeout_graceful_shutdown
        while (state.connections or state.tasks) and loop.time() < deadline:
            await asyncio.sleep(0.005)
        if state.tasks:
            log.warning(
                "proxy on port %s: %d answer(s) still running after %g s of shutdown grace were cut off",
                self.port, len(state.tasks), server.config.timeout_graceful_shutdown,
            )  # fmt: skip
        for t in list(state.tasks):
            t.cancel(msg="graceful shutdown time exceeded")
        for s in server.servers:
            await s.wait_closed()

    async def stop(self) -> None:
        if self._task is None:
            return
        task, self._task = self._task, None
        if not task.done():
            self.server.should_exit = True
            try:
                # Graceful shutdown waits for open streams at most timeout_graceful_shutdown.
                await asyncio.wait_for(self._shutdown(), 15)
            except TimeoutError:
                self.server.force_exit = True
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        elif not task.cancelled() and task.exception() is not None:
            log.warning("proxy server had stopped: %r", task.exception())
