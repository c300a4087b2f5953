"""What the account and cross-site tests share: LlamaMan's surfaces served by real uvicorn servers on
loopback (the main app, the proxy port and an instance port), an admin, and a signed-in browser."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
from sqlmodel import select

from llamaman.app import LlamaMan
from llamaman.auth.sessions import SESSION_COOKIE
from llamaman.core.config import Settings
from llamaman.core.tables import ModelAlias
from llamaman.proxy.fast_lane import FastLane

ADMIN, PASSWORD = "admin", "correct horse battery"


@dataclass
class Box:
    services: LlamaMan
    main: str  # http://127.0.0.1:<port>
    proxy: str
    instance: str
    lane: FastLane | None = None  # the main port's fast lane, as ``main.py`` serves that port

    def client(self, base: str | None = None, **kwargs: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=base or self.main, trust_env=False, timeout=30, **kwargs)

    async def sign_in(self, username: str = ADMIN, password: str = PASSWORD) -> str:
        """The session cookie a browser gets by signing in on the main port."""
        async with self.client(headers={"Origin": self.main}) as c:
            r = await c.post("/api/auth/login", json={"username": username, "password": password})
            assert r.status_code == 200, r.text
            return r.cookies[SESSION_COOKIE]

    def aliases(self) -> list[str]:
        with self.services.db.session() as s:
            return [a.alias for a in s.exec(select(ModelAlias)).all()]


def cookie(value: str) -> dict[str, str]:
    return {"Cookie": f"{SESSION_COOKIE}={value}"}


@contextlib.asynccontextmanager
async def served(make_settings: Callable[..., Settings], **env: Any) -> AsyncIterator[Box]:
    """LlamaMan with an admin, and each surface on a real uvicorn server on a free loopback port."""
    from llamaman.app import create_app
    from llamaman.proxy.app import ProxyServer, create_proxy_app
    from llamaman.proxy.listeners import create_instance_app

    services = LlamaMan(make_settings(**env))
    await services.start()
    servers: list[ProxyServer] = []
    try:
        await services.auth.create_first_admin(ADMIN, PASSWORD)
        instance_app = services.listeners.wrap(create_instance_app(services, "no-such-instance"))
        # The main port served as ``main.py`` serves it (``LlamaMan.main_protocol``: its fast lane,
        # and its app for model requests), so every attack here meets it as it is.
        protocol = services.main_protocol()
        apps = ((create_app(services, manage_lifecycle=False), protocol), (create_proxy_app(services), None))
        for app, app_protocol in (*apps, (instance_app, None)):
            server = ProxyServer(app, "127.0.0.1", 0, protocol=app_protocol)
            await server.start()
            servers.append(server)
        yield Box(services, *(s.url for s in servers), lane=getattr(protocol, "lane", None))
    finally:
        for server in servers:
            await server.stop()
        await services.stop()
