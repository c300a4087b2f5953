"""Wiring: the one place that knows every package.

``LlamaMan`` is the core services plus the servers that face the network (the proxy port and one
listener per instance port); ``install`` and ``create_app`` put the REST API and the model endpoints
on a FastAPI app. Used by ``main.py`` (on NiceGUI's app), the CLI and the tests.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from llamaman import __version__
from llamaman.api import build_router
from llamaman.core.config import Settings
from llamaman.core.redact import install_log_redaction
from llamaman.core.secrets import secure_data_dir
from llamaman.gateway.api_docs import install_api_docs
from llamaman.gateway.errors import install_error_handlers
from llamaman.gateway.http_protocol import GuardedHttpToolsProtocol
from llamaman.gateway.middleware import wrap_with_auth
from llamaman.proxy.app import (
    MODEL_TARGETS,
    ProxyServer,
    build_proxy_router,
    create_proxy_app,
    install_proxy_error_handler,
    main_port_models,
)
from llamaman.proxy.fast_lane import FastLane
from llamaman.proxy.fast_protocol import lane_protocol
from llamaman.proxy.listeners import InstanceListeners
from llamaman.services import Services


class LlamaMan(Services):
    """The services of one LlamaMan process with its proxy server and per-instance listeners."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.proxy_server: ProxyServer | None = None
        # Every instance gets LlamaMan's listener on its public port (llama-server itself listens on
        # an internal one), so keys, gates, overrides and wake-on-request hold on instance ports too.
        self.listeners = InstanceListeners(self)
        self.listeners.attach()
        self.listeners.wrap = lambda app: wrap_with_auth(app, self, "instance")
        self.telemetry.benchmarks.open_proxy = self.benchmark_proxy

    async def start(self) -> None:
        if self.started:
            return
        await super().start()
        if self.settings.proxy_port:
            server = ProxyServer(
                create_proxy_app(self), self.settings.host, self.settings.proxy_port, lane=self.fast_lane()
            )
            try:
                await server.start()
            except OSError:
                await self.stop()  # a clear failure beats a LlamaMan whose proxy port is silently dead
                raise
            self.proxy_server = server

    def fast_lane(self, *, main_port: bool = False) -> FastLane | None:
        """The proxy port's fast lane (or the main port's), unless the settings turn it off."""
        return FastLane(self, main_port=main_port) if self.settings.proxy_fast_lane else None

    def main_protocol(self) -> type[GuardedHttpToolsProtocol]:
        """The HTTP protocol of the main port: the guarded one, with the fast lane in front of the
        UI's app for the plain model requests a client sends to this port instead of the proxy's,
        and the other model requests without a cookie sent past the UI's layers
        (``main_port_models``)."""
        lane = self.fast_lane(main_port=True)
        if lane is None:
            return GuardedHttpToolsProtocol
        return lane_protocol(lane, main_port_models(self), MODEL_TARGETS)

    async def stop(self) -> None:
        if not self.started:
            return
        if self.proxy_server is not None:
            await self.proxy_server.stop()
            self.proxy_server = None
        await super().stop()  # telemetry after the proxy: its last requests still reach the activity log

    async def stop_listeners(self) -> None:
        await self.listeners.stop_all()

    @asynccontextmanager
    async def benchmark_proxy(self) -> AsyncIterator[str]:
        """The proxy a benchmark runs through: the listening one, or one of its own on a free port."""
        served = self.proxy_server
        if served is not None and served.running:
            yield served.url
            return
        server = ProxyServer(create_proxy_app(self), "127.0.0.1", 0, lane=self.fast_lane())
        await server.start()
        try:
            yield server.url
        finally:
            await server.stop()


def settle_heap() -> None:
    """Take what start-up built (modules, the UI's and the app's objects: it lives as long as the
    process) out of the garbage collector's view. Otherwise every full collection walks all of it
    again: 70-190 ms pauses every few seconds under load were measured, each stalling every request
    in flight; after this a full collection only walks what was made since."""
    gc.collect()
    gc.freeze()


def install(app: FastAPI, services: Services) -> None:
    """Mount the REST API and the proxy routes on ``app`` and make ``services`` reachable from them."""
    app.state.services = services
    secure_data_dir(services.settings)
    install_error_handlers(app)
    install_proxy_error_handler(app)
    install_api_docs(app)
    app.include_router(build_router())
    # The model endpoints answer on the UI port too; its "/" stays the UI's.
    app.include_router(build_proxy_router(include_root=False))
    # Every request passes the auth middleware: UI pages, REST and model endpoints alike.
    wrap_with_auth(app, services, "main")
    install_log_redaction()


def create_app(services: Services, *, manage_lifecycle: bool = True) -> FastAPI:
    """A standalone app (no UI) whose lifespan starts and stops ``services``."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if manage_lifecycle:
            await services.start()
        try:
            yield
        finally:
            if manage_lifecycle:
                await services.stop()

    app = FastAPI(title="LlamaMan", version=__version__, lifespan=lifespan)
    install(app, services)
    return app
