"""A burst at a one-slot model reaches its llama-server over two connections at most, the slot's and
one queued behind it, whichever way each request comes (the fast lane, the full path, Ollama's
stream): each request takes over the connection the one before it finished with (llama-server may
close one after a stream: then a fresh one takes its place), and every answer is right."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from llamaman.app import LlamaMan
from llamaman.proxy.app import ProxyServer
from llamaman.testing.tiny_gguf import expected_text

pytestmark = pytest.mark.llama

HI = [{"role": "user", "content": "hi"}]


async def test_a_burst_at_one_slot_reaches_llama_server_over_two_connections(
    services: LlamaMan, proxy: ProxyServer
) -> None:
    m = await services.router.load("tiny-a")
    assert m.settings.parallel == 1 and m.connections == 2
    upstream = services.relay.upstream
    connect = upstream._connect
    opened: list[Any] = []
    most = 0

    async def counted(key: tuple[str, int]) -> Any:
        nonlocal most
        assert key == ("127.0.0.1", m.upstream_port)
        conn = await connect(key)
        opened.append(conn)
        most = max(most, sum(not c.lost for c in opened))
        return conn

    upstream._connect = counted  # type: ignore[method-assign]
    _, key = await services.auth.keys.create("burst")
    # A fresh connection per request, as a burst of scripts sends them.
    h = {"Authorization": f"Bearer {key}", "Connection": "close"}

    async def plain(c: httpx.AsyncClient, n: int, path: str) -> str:
        r = await c.post(path, json={"model": "tiny-a", "messages": HI, "max_tokens": n})
        assert r.status_code == 200, r.text
        return str(r.json()["choices"][0]["message"]["content"])

    async def ollama(c: httpx.AsyncClient, n: int) -> str:
        body = {"model": "tiny-a", "messages": HI, "options": {"num_predict": n}}
        async with c.stream("POST", "/api/chat", json=body) as r:
            assert r.status_code == 200
            lines = [json.loads(line) async for line in r.aiter_lines() if line]
        assert lines[-1]["done"] is True
        return "".join(line["message"]["content"] for line in lines)

    async with httpx.AsyncClient(base_url=proxy.url, headers=h, timeout=60) as c:
        asked = [
            *(plain(c, n, "/v1/chat/completions") for n in range(2, 10)),
            *(plain(c, n, "/v1/chat/completions?x=1") for n in range(2, 5)),  # the full path
        ]
        assert await asyncio.gather(*asked) == [expected_text("A", n) for n in (*range(2, 10), *range(2, 5))]
        assert len(opened) <= 2  # eleven requests, two connections
        mixed = [
            *(plain(c, n, "/v1/chat/completions") for n in range(2, 6)),
            *(ollama(c, n) for n in range(2, 7)),
        ]
        got = await asyncio.gather(*mixed)
    assert got == [expected_text("A", n) for n in (*range(2, 6), *range(2, 7))]
    assert most <= 2
