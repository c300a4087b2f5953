"""The proxy port as LlamaMan runs it: started and stopped by ``LlamaMan`` inside the app's event loop."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from llamaman.app import LlamaMan
from llamaman.core.config import Settings
from llamaman.proxy.app import ProxyServer, create_proxy_app
from tests.helpers import admin_headers, servers_of


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


async def test_services_serve_the_proxy_on_its_port(
    make_settings: Callable[..., Settings], llama_server_bin: str
) -> None:
    port = _free_port()
    services = LlamaMan(make_settings(LLAMA_SERVER_BIN=llama_server_bin, LLAMAMAN_PROXY_PORT=port))
    await services.start()
    try:
        assert services.proxy_server is not None and services.proxy_server.port == port
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", trust_env=False, timeout=30) as c:
            r = await c.get("/health")
            assert r.status_code == 200 and r.json()["status"] == "ok"
        key = (await admin_headers(services))["Authorization"].removeprefix("Bearer ")
        client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0)
        async with client:
            reply = await client.chat.completions.create(
                model="tiny-a", messages=[{"role": "user", "content": "hi"}], max_tokens=6
            )
        assert (reply.choices[0].message.content or "").startswith("abcdef")
    finally:
        await services.stop()
    assert services.proxy_server is None
    assert not _listening(port)
    assert servers_of(str(services.settings.data_dir)) == []


async def test_a_taken_proxy_port_fails_start_clearly_and_leaves_nothing_running(
    make_settings: Callable[..., Settings], llama_server_bin: str
) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen(1)
        port = blocker.getsockname()[1]
        services = LlamaMan(make_settings(LLAMA_SERVER_BIN=llama_server_bin, LLAMAMAN_PROXY_PORT=port))
        with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{port}.*LLAMAMAN_PROXY_PORT"):
            await services.start()
    assert not services.started and services.proxy_server is None


async def test_proxy_port_zero_means_no_proxy(services: Any) -> None:
    assert services.proxy_server is None


async def test_stop_ends_open_streams_within_the_grace_period(services: Any) -> None:
    server = ProxyServer(create_proxy_app(services), "127.0.0.1", 0)
    await server.start()
    assert _listening(server.port)
    headers = await admin_headers(services)
    body = {
        "model": "tiny-a",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "max_tokens": 100000,
    }
    got_data = asyncio.Event()

    async def read_forever() -> None:
        async with (
            httpx.AsyncClient(trust_env=False, timeout=60, headers=headers) as c,
            c.stream("POST", f"{server.url}/v1/chat/completions", json=body) as r,
        ):
            async for _ in r.aiter_bytes():
                got_data.set()

    reader = asyncio.create_task(read_forever())
    await asyncio.wait_for(got_data.wait(), 30)
    t0 = time.monotonic()
    assert not reader.done()
    await server.stop()
    assert time.monotonic() - t0 < 12
    assert not _listening(server.port)
    reader.cancel()
    await asyncio.gather(reader, return_exceptions=True)
    # The interrupted request gave its lease back.
    await asyncio.sleep(0.2)
    assert all(services.router.slot(m).inflight == 0 for m in services.supervisor.list())


async def test_start_twice_and_stop_twice_are_harmless(services: Any) -> None:
    server = ProxyServer(create_proxy_app(services), "127.0.0.1", 0)
    await server.start()
    port = server.port
    await server.start()
    assert server.port == port
    await server.stop()
    await server.stop()
    assert not _listening(port)


async def test_the_served_app_skips_fastapis_idle_layers_yet_still_answers_a_crash_with_a_500() -> None:
    from fastapi import FastAPI
    from fastapi._body_limit import AppBodyLimitMiddleware
    from fastapi.telemetry._asgi import ExceptionTelemetryMiddleware

    from llamaman.proxy.app import _front, _lean_stack
    from llamaman.upstream.responses import RAW_SEND

    app = FastAPI()
    seen: dict[str, Any] = {}

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("a bug")

    layers, layer = [], _lean_stack(app)
    while layer is not None:
        layers.append(type(layer))
        layer = getattr(layer, "app", None)
    assert ExceptionTelemetryMiddleware not in layers and AppBodyLimitMiddleware not in layers

    served = _front(app)

    async def spy(scope: Any, receive: Any, send: Any) -> None:
        try:
            await served(scope, receive, send)
        finally:
            seen["raw_send"] = scope.get(RAW_SEND) is send

    transport = httpx.ASGITransport(app=spy, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://proxy") as c:
        r = await c.get("/boom")
        assert r.status_code == 500 and "Traceback" not in r.text
    assert seen["raw_send"]  # the server's own send is in the scope for the relay's stream chunks
