"""The main port as ``main.py`` serves it (``LlamaMan.main_protocol``): the plainest model requests on
the fast lane, the other model requests without a cookie past the UI's app to the proxy's app
guarded as the main port, and everything else (pages, the REST API, any request with a cookie) to
the UI's app, as before."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import pytest
from starlette.types import ASGIApp, Receive, Scope, Send

from llamaman.app import LlamaMan, create_app
from llamaman.proxy.app import ProxyServer
from llamaman.testing.tiny_gguf import expected_text

pytestmark = pytest.mark.llama

HI = [{"role": "user", "content": "hi"}]


@dataclass
class MainPort:
    url: str
    ui_app_saw: list[str] = field(default_factory=list)  # the paths of what reached the UI's app


@pytest.fixture
async def main_port(services: LlamaMan) -> AsyncIterator[MainPort]:
    app = create_app(services, manage_lifecycle=False)
    port = MainPort("")

    class Seen:
        def __init__(self, inner: ASGIApp) -> None:
            self.inner = inner

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "http":
                port.ui_app_saw.append(scope["path"])
            await self.inner(scope, receive, send)

    app.add_middleware(Seen)
    server = ProxyServer(app, "127.0.0.1", 0, protocol=services.main_protocol())
    await server.start()
    port.url = server.url
    try:
        yield port
    finally:
        await server.stop()


async def test_model_requests_without_a_cookie_skip_the_ui_app_and_keep_every_check(
    services: LlamaMan, main_port: MainPort
) -> None:
    await services.router.load("tiny-a")
    await services.router.load("tiny-b")
    # A key with a model list: never the lane's, so each of these is a request going the full way.
    _, key = await services.auth.keys.create("only-a", allowed_models=["tiny-a"])
    auth = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=main_port.url, headers=auth, timeout=60, trust_env=False) as c:
        ollama = {"model": "tiny-a", "messages": HI, "stream": False, "options": {"num_predict": 3}}
        r = await c.post("/api/chat", json=ollama)
        assert r.status_code == 200 and r.json()["message"]["content"] == expected_text("A", 3), r.text
        chat = {"model": "tiny-a", "messages": HI, "max_tokens": 3}
        r = await c.post("/v1/chat/completions", json=chat)
        assert r.json()["choices"][0]["message"]["content"] == expected_text("A", 3)
        r = await c.post("/v1/messages", json={**chat, "model": "tiny-a"})
        assert r.status_code == 200 and r.json()["content"][0]["text"] == expected_text("A", 3), r.text
        # The key's model list holds there, in each dialect.
        r = await c.post("/v1/chat/completions", json={**chat, "model": "tiny-b"})
        assert r.status_code == 403 and "tiny-b" in r.json()["error"]["message"]
        r = await c.post("/api/chat", json={**ollama, "model": "tiny-b"})
        assert r.status_code == 403 and "tiny-b" in r.json()["error"]
        assert main_port.ui_app_saw == []
        # Pages and the REST API are the UI app's, and so is a model request with a cookie.
        assert (await c.get("/api/tags")).status_code == 200
        r = await c.post("/v1/chat/completions", json=chat, headers={"Cookie": "theme=dark"})
        assert r.json()["choices"][0]["message"]["content"] == expected_text("A", 3)
        assert main_port.ui_app_saw == ["/api/tags", "/v1/chat/completions"]
    # Without a key, where the box requires one, the answer is the main port's 401.
    await services.runtime.update({"require_auth": True})
    async with httpx.AsyncClient(base_url=main_port.url, timeout=60, trust_env=False) as c:
        r = await c.post("/api/chat", json={"model": "tiny-a", "messages": HI, "stream": False})
        assert r.status_code == 401 and "key" in r.json()["error"], r.text
    assert main_port.ui_app_saw == ["/api/tags", "/v1/chat/completions"]
