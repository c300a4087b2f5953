"""The FastAPI surfaces, independent of the UI: used by ``main.py`` (on NiceGUI's app) and by tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from llamaman import __version__
from llamaman.api import build_router
from llamaman.core.redact import install_log_redaction
from llamaman.core.secrets import secure_data_dir
from llamaman.gateway.errors import install_error_handlers
from llamaman.gateway.middleware import wrap_with_auth
from llamaman.proxy.app import build_proxy_router, install_proxy_error_handler
from llamaman.services import Services


def install(app: FastAPI, services: Services) -> None:
    """Mount the REST API and the proxy routes on ``app`` and make ``services`` reachable from them."""
    app.state.services = services
    secure_data_dir(services.settings)
    install_error_handlers(app)
    install_proxy_error_handler(app)
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
