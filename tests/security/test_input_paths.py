"""Paths relayed to a llama-server (``/upstream/<model>/...`` and everything on an instance port) are
percent-encoded again before they go upstream: odd bytes in them are relayed or refused with a 4xx,
never a 500, and cannot add lines to the upstream request. Against real llama-servers."""

from __future__ import annotations

import asyncio
import contextlib

import httpx

from llamaman.app import LlamaMan
from llamaman.core.state import InstanceState
from llamaman.instances.launch import LaunchSettings
from llamaman.proxy.app import ProxyServer
from llamaman.upstream.client import upstream_path

ODD = [
    "health%E2%82%AC",
    "%E2%82%AC",
    "health%00",
    "%00",
    "a%2Fb",
    "a%20b",
    "health%0D%0AX-Injected:%201",
    "%0D%0A%0D%0AGET%20/slots%20HTTP/1.1",
    "%FF%FE",
    "%25",
    "%3F?x=1",
    "props%3Fmodel=x",
    "%C3%BC/%F0%9F%A6%99",
    "..%2F..%2Fetc%2Fpasswd",
    "%5C%22%3C%3E",
]


def test_upstream_path_encodes_what_a_request_line_cannot_carry() -> None:
    assert upstream_path("health") == "/health"
    assert upstream_path("v1/models") == "/v1/models"
    assert upstream_path("a b") == "/a%20b"
    assert upstream_path("€") == "/%E2%82%AC"
    assert upstream_path("x\r\nY: 1") == "/x%0D%0AY:%201"
    assert upstream_path("a?b") == "/a%3Fb"
    assert upstream_path("100%") == "/100%25"


async def raw_get(port: int, target: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    await writer.drain()
    out = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()
    return out


async def test_odd_paths_are_relayed_or_refused_never_500(services: LlamaMan, proxy: ProxyServer) -> None:
    m = await services.supervisor.launch(LaunchSettings(model_path="tiny-a.gguf", ctx_size=512))
    assert (
        await m.proc.wait_for({InstanceState.HEALTHY, InstanceState.FAILED}, timeout=60)
        == InstanceState.HEALTHY
    )
    bases = {"proxy": (proxy.port, "/upstream/tiny-a/"), "instance": (m.record.port, "/")}
    async with httpx.AsyncClient(timeout=30, trust_env=False) as c:
        for surface, (port, prefix) in bases.items():
            for odd in ODD:
                url = f"http://127.0.0.1:{port}{prefix}{odd}"
                r = await c.get(url)
                assert r.status_code < 500, (surface, odd, r.status_code, r.text[:200])
                r = await c.post(url, json={"model": "tiny-a"})
                assert r.status_code < 500, (surface, odd, r.status_code, r.text[:200])
            # The request line itself carrying raw non-ASCII and a tab.
            for target in (prefix.encode() + "€".encode(), prefix.encode() + b"a\tb"):
                answer = await raw_get(port, target)
                assert answer == b"" or not answer.startswith(b"HTTP/1.1 5"), (surface, target, answer[:200])
            assert (await c.get(f"http://127.0.0.1:{port}{prefix}health")).status_code == 200
        r = await c.get(f"http://127.0.0.1:{proxy.port}/upstream/tiny-%E2%82%AC/health")
        assert r.status_code == 404


async def test_fields_llama_server_cannot_parse_are_client_errors(
    services: LlamaMan, proxy: ProxyServer
) -> None:
    """llama-server answers 500 for a request field it fails to parse; the client hears 400."""
    async with httpx.AsyncClient(base_url=proxy.url, timeout=60, trust_env=False) as c:
        r = await c.post("/v1/messages/count_tokens", json={"model": "tiny-a"})
        assert r.status_code == 400 and "required" in r.text, r.text
        hi = [{"role": "user", "content": "hi"}]
        r = await c.post("/api/chat", json={"model": "tiny-a", "messages": hi, "tools": [5], "stream": False})
        assert r.status_code == 400 and "tool" in r.json()["error"], r.text
        r = await c.post("/v1/chat/completions", json={"model": "tiny-a", "messages": hi, "max_tokens": 2})
        assert r.status_code == 200, r.text
        # A token id beyond the vocabulary: llama-server's range check fails with a 500.
        r = await c.post("/detokenize", json={"model": "tiny-a", "tokens": [44136]})
        assert r.status_code == 400 and "range" in r.text, r.text
        # A feature the model was not launched with (llama-server's 501) is the caller's to change.
        r = await c.post("/v1/embeddings", json={"model": "tiny-a", "input": "hi"})
        assert r.status_code == 400 and "embeddings" in r.text, r.text


async def test_a_model_path_longer_than_the_file_system_allows_is_a_400(services: LlamaMan) -> None:
    from llamaman.app import create_app
    from tests.helpers import admin_headers

    app = create_app(services, manage_lifecycle=False)
    headers = await admin_headers(services)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t", headers=headers
    ) as c:
        for path in ("a" * 5000, "a/" * 3000, "x" * 256 + ".gguf"):
            for route in ("/api/model-layers", "/api/model-memory"):
                r = await c.get(route, params={"path": path})
                assert 400 <= r.status_code < 500, (route, len(path), r.text)
