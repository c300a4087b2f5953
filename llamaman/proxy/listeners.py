"""LlamaMan's own listener on each instance's public port (8000-8020).

llama-server itself listens on an internal port; the listener in front of it passes requests
through unchanged, except that it wakes a sleeping instance, enforces the instance's concurrency
gate and sampling overrides, and refuses a request naming another model (without waking anything).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from starlette.responses import JSONResponse, Response

from llamaman.core.state import InstanceState
from llamaman.gateway.bodies import BodyError, cached_body, parsed_body, remember_body
from llamaman.instances.supervisor import InstanceError, ManagedInstance
from llamaman.proxy.app import ProxyServer
from llamaman.proxy.common import ProxyError
from llamaman.scheduling.router import ModelUnavailable, QueueFull
from llamaman.services import Services
from llamaman.upstream.client import upstream_path
from llamaman.upstream.relay import raw_forward_headers

log = logging.getLogger(__name__)
_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"]


def _base(name: str) -> str:
    return name[: -len(":latest")] if name.endswith(":latest") else name


def model_matches(requested: str, m: ManagedInstance, aliases: dict[str, str]) -> bool:
    """Whether a request's ``model`` may be served by ``m``: its name, path or an alias of it, or a
    prefix either way (clients send "llama3" for "llama3-8b-q4" and the reverse)."""
    want = _base(requested.strip())
    if not want:
        return True
    names = {m.record.model_name, m.record.model_path, m.record.model_path.removesuffix(".gguf")}
    names |= {a for a, target in aliases.items() if target in names}
    return any(n == want or n.startswith(want) or want.startswith(n) for n in names)


def create_instance_app(services: Services, instance_id: str) -> FastAPI:
    app = FastAPI(title=f"LlamaMan instance {instance_id}", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.services = services
    app.state.instance_id = instance_id

    @app.get("/health")
    async def health() -> Response:
        # Answered here so a health probe never wakes a sleeping instance.
        m = services.supervisor.instances.get(instance_id)
        if m is None:
            return JSONResponse({"status": "error", "error": "instance removed"}, status_code=503)
        ready = m.state in (InstanceState.HEALTHY, InstanceState.SLEEPING)
        return JSONResponse({"status": "ok" if ready else m.state.value}, status_code=200 if ready else 503)

    @app.api_route("/{path:path}", methods=_METHODS)
    async def passthrough(path: str, request: Request) -> Response:
        m = services.supervisor.instances.get(instance_id)
        if m is None:
            return JSONResponse(
                {"error": {"message": "instance removed", "type": "server_error"}}, status_code=503
            )
        raw = cached_body(request.scope)
        if raw is None:
            raw = await request.body()
            remember_body(request.scope, raw)
        try:
            parsed = parsed_body(request.scope, "instance")
        except BodyError as exc:
            return ProxyError(exc.status, exc.message).response("openai")
        body: dict[str, Any] | None = parsed if isinstance(parsed, dict) else None
        if body is not None and isinstance(body.get("model"), str):
            if not model_matches(body["model"], m, services.aliases.aliases):
                return ProxyError(
                    404, f"model '{body['model']}' is not served on this port ({m.record.model_name} is)"
                ).response("openai")
        try:
            lease = await services.router.acquire_instance(m)
        except QueueFull as exc:
            return ProxyError.of(exc).response("openai")
        except (ModelUnavailable, InstanceError) as exc:
            # Whatever kept the instance from starting, this port cannot serve now.
            return ProxyError.of(ModelUnavailable(exc.message)).response("openai")
        except TimeoutError:
            return ProxyError(504, "the instance was not ready within REQUEST_TIMEOUT").response("openai")
        forced = m.settings.sampling.active()
        if body is not None and forced and request.method == "POST":
            body.update(forced)
            raw = json.dumps(body).encode()
        qs = request.url.query
        return await services.relay.forward(
            lease,
            request.method,
            upstream_path(path) + (f"?{qs}" if qs else ""),
            content=raw or None,
            headers=raw_forward_headers(request.scope),
        )

    return app


class InstanceListeners:
    """Owner of the per-instance listener servers."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.servers: dict[str, ProxyServer] = {}
        self.wrap: Any = None  # set by the auth layer to guard instance ports

    def attach(self) -> None:
        sup = self.services.supervisor
        sup.open_listener = self.open
        sup.close_listener = self.close
        sup.always_listen = True

    async def open(self, m: ManagedInstance) -> None:
        if m.id in self.servers:
            return
        app: Any = create_instance_app(self.services, m.id)
        if self.wrap is not None:
            app = self.wrap(app)
        server = ProxyServer(app, self.services.settings.host, m.record.port)
        await server.start()
        self.servers[m.id] = server

    async def close(self, m: ManagedInstance) -> None:
        server = self.servers.pop(m.id, None)
        if server is not None:
            await server.stop()

    async def stop_all(self) -> None:
        for iid in list(self.servers):
            server = self.servers.pop(iid)
            await server.stop()
