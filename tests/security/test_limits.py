"""Size and time limits on every port: request headers (431, slowloris 408) and bodies (413), tried
with raw sockets against real uvicorn servers: the proxy port, an instance port and the main port."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from llamaman.app import LlamaMan, create_app
from llamaman.core.config import Settings
from llamaman.gateway.http_protocol import GuardedHttpToolsProtocol
from llamaman.proxy.app import ProxyServer, create_proxy_app
from llamaman.proxy.fast_lane import FastLane
from llamaman.proxy.listeners import create_instance_app
from tests.helpers import admin_headers

pytestmark = pytest.mark.auth
MiB = 1024 * 1024


@pytest.fixture
async def box(make_settings: Callable[..., Settings]) -> AsyncIterator[LlamaMan]:
    services = LlamaMan(make_settings(LLAMA_SERVER_BIN="/nonexistent/llama-server"))
    await services.start()
    try:
        yield services
    finally:
        await services.stop()


@pytest.fixture
def short_header_timeout(monkeypatch: pytest.MonkeyPatch) -> float:
    monkeypatch.setattr(GuardedHttpToolsProtocol, "header_timeout", 1.0)
    return 1.0


@pytest.fixture(params=["proxy", "instance", "main-app"])
async def port(request: pytest.FixtureRequest, box: LlamaMan) -> AsyncIterator[tuple[str, int]]:
    """(surface, port) of a real server: the proxy app, an instance listener's app, and the main
    app's routes served the way the proxy serves them (the main port itself is tested below)."""
    if request.param == "proxy":
        app: Any = create_proxy_app(box)
    elif request.param == "instance":
        app = box.listeners.wrap(create_instance_app(box, "no-such-instance"))
    else:
        app = create_app(box, manage_lifecycle=False)
    server = ProxyServer(app, "127.0.0.1", 0)
    await server.start()
    try:
        yield request.param, server.port
    finally:
        await server.stop()


async def exchange(port: int, data: bytes, *, read_timeout: float = 10.0) -> bytes:
    """Send ``data`` and read until the server closes or goes quiet; b"" when it only closed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        with contextlib.suppress(ConnectionError):
            writer.write(data)
            await writer.drain()
        out = b""
        with contextlib.suppress(ConnectionError, TimeoutError):
            while chunk := await asyncio.wait_for(reader.read(65536), read_timeout):
                out += chunk
        return out
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def status_of(answer: bytes) -> int | None:
    if not answer.startswith(b"HTTP/1.1 "):
        return None
    return int(answer[9:12])


async def test_huge_headers_are_refused_with_431(port: tuple[str, int]) -> None:
    _, p = port
    me = psutil.Process()
    before = me.memory_info().rss
    for header in (
        b"X-Big: " + b"a" * (5 * MiB),
        b"".join(b"X-%d: %s\r\n" % (i, b"b" * 1000) for i in range(5000)),
    ):
        head = b"GET /health HTTP/1.1\r\nHost: x\r\n" + header.rstrip(b"\r\n") + b"\r\n\r\n"
        answer = await exchange(p, head)
        assert status_of(answer) in (431, None), answer[:200]
        if answer:
            assert b"larger than the 64 KiB" in answer
    long_url = b"GET /health?" + b"q" * (2 * MiB) + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    assert status_of(await exchange(p, long_url)) in (431, None)
    assert me.memory_info().rss - before < 64 * MiB  # not buffered: 5 MB headers each time would show


async def test_headers_over_the_limit_that_arrive_in_one_read_are_counted_and_refused_with_431(
    box: LlamaMan, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Headers whose end comes in the same read as the bytes over the limit pass the check on
    incomplete headers; only the count of each parsed line (and of the target) can refuse them.
    With a small limit, the whole request fits in one read; every surface is tried, the proxy's
    fast lane included, with a body and a key the lane would otherwise take."""
    monkeypatch.setattr(GuardedHttpToolsProtocol, "max_header_bytes", 2048)
    _, key = await box.auth.keys.create("plain")
    body = b'{"model":"tiny-a","messages":[{"role":"user","content":"hi"}]}'
    plain = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n" % key.encode()
    plain += b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(body)
    many = b"".join(b"X-%d: %s\r\n" % (i, b"b" * 40) for i in range(60))
    one = b"X-Big: " + b"a" * 2500 + b"\r\n"
    long_target = plain.replace(b"/v1/chat/completions", b"/v1/chat/completions?" + b"q" * 2500, 1)
    servers = [
        ProxyServer(create_proxy_app(box), "127.0.0.1", 0, lane=FastLane(box)),
        ProxyServer(box.listeners.wrap(create_instance_app(box, "no-such-instance")), "127.0.0.1", 0),
        ProxyServer(create_app(box, manage_lifecycle=False), "127.0.0.1", 0),
    ]
    for server in servers:
        await server.start()
        try:
            for head in (plain + many, plain + one, long_target):
                answer = await exchange(server.port, head + b"\r\n" + body)
                assert status_of(answer) == 431, (server.port, answer[:200])
                assert b"larger than the 2 KiB" in answer
            # Under the limit, the same request is not refused for its headers.
            answer = await exchange(server.port, plain + b"Connection: close\r\n\r\n" + body)
            assert status_of(answer) not in (431, None), answer[:200]
        finally:
            await server.stop()


async def test_normal_headers_still_pass(port: tuple[str, int]) -> None:
    _, p = port
    head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Ok: " + b"c" * 30_000 + b"\r\nConnection: close\r\n\r\n"
    answer = await exchange(p, head)
    assert status_of(answer) in (200, 503), answer[:200]


async def dribble_headers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    """Send a header line every 0.2 s (8 s if nothing stops it) and return what the server answers."""
    out = b""
    with contextlib.suppress(ConnectionError):
        for i in range(40):
            writer.write(b"X-Slow-%d: y\r\n" % i)
            await writer.drain()
            with contextlib.suppress(TimeoutError):
                chunk = await asyncio.wait_for(reader.read(4096), 0.2)
                out += chunk
                if not chunk:
                    break
    writer.close()
    return out


async def test_slow_headers_are_cut_off(port: tuple[str, int], short_header_timeout: float) -> None:
    _, p = port
    reader, writer = await asyncio.open_connection("127.0.0.1", p)
    started = time.monotonic()
    writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n")
    out = await dribble_headers(reader, writer)
    elapsed = time.monotonic() - started
    assert elapsed < short_header_timeout + 3, elapsed
    assert status_of(out) in (408, None), out[:200]


async def test_slow_headers_after_a_first_request_on_the_same_connection_are_cut_off_too(
    port: tuple[str, int], short_header_timeout: float
) -> None:
    _, p = port
    reader, writer = await asyncio.open_connection("127.0.0.1", p)
    writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")  # whole: answered, no deadline left set
    first = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert status_of(first) in (200, 503)
    started = time.monotonic()
    writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n")
    out = await dribble_headers(reader, writer)
    assert time.monotonic() - started < short_header_timeout + 3
    assert b"HTTP/1.1 408 Request Timeout" in out, out[-200:]


async def test_silent_connections_are_closed(port: tuple[str, int], short_header_timeout: float) -> None:
    _, p = port
    started = time.monotonic()
    answer = await exchange(p, b"", read_timeout=short_header_timeout + 5)
    assert time.monotonic() - started < short_header_timeout + 3
    assert status_of(answer) in (408, None)


async def test_kept_alive_connections_are_not_cut_between_requests(
    port: tuple[str, int], short_header_timeout: float
) -> None:
    _, p = port
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{p}", trust_env=False) as c:
        assert (await c.get("/health")).status_code in (200, 503)
        await asyncio.sleep(short_header_timeout * 1.5)
        assert (await c.get("/health")).status_code in (200, 503)


async def test_bodies_over_the_limit_are_refused_early(port: tuple[str, int], box: LlamaMan) -> None:
    surface, p = port
    headers = await admin_headers(box)
    auth = b"Authorization: " + headers["Authorization"].encode() + b"\r\n"
    # A model endpoint: 64 MiB. A Content-Length over it is refused before any byte of the body.
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n%sContent-Type: application/json\r\n" % auth
    answer = await exchange(p, head + b"Content-Length: %d\r\n\r\n" % (300 * MiB))
    assert status_of(answer) == 413, answer[:300]
    assert b"larger than the 64 MiB" in answer
    # Chunked, no length: refused once the limit passes, without reading the rest.
    reader, writer = await asyncio.open_connection("127.0.0.1", p)
    writer.write(head + b"Transfer-Encoding: chunked\r\n\r\n")
    chunk = b"a" * MiB
    sent = 0
    with contextlib.suppress(ConnectionError):
        for _ in range(80):
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            await writer.drain()
            sent += 1
    answer = b""
    with contextlib.suppress(ConnectionError, TimeoutError):
        while data := await asyncio.wait_for(reader.read(65536), 10):
            answer += data
    writer.close()
    assert status_of(answer) in (413, None), answer[:300]
    if surface == "instance":
        return
    # Sign-in and management: 1 MiB.
    login = b"POST /api/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    answer = await exchange(p, login + b"Content-Length: %d\r\n\r\n" % (300 * MiB) + b"{" * 1000)
    if surface == "main-app":
        assert status_of(answer) == 413 and b"larger than the 1 MiB" in answer, answer[:300]
    else:
        assert status_of(answer) in (413, 401, 404), answer[:300]


async def test_body_limits_by_endpoint(box: LlamaMan) -> None:
    app = create_app(box, manage_lifecycle=False)
    headers = await admin_headers(box)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t", headers=headers
    ) as c:
        big = b'{"username":"' + b"a" * (2 * MiB) + b'","password":"x"}'
        r = await c.post("/api/auth/login", content=big, headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and r.json()["detail"].startswith("the request body is larger")

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(3):
                yield b"a" * MiB

        r = await c.post("/api/settings", content=chunks())
        assert r.status_code == 413
        r = await c.post("/api/restore", content=b'{"x":"' + b"a" * (3 * MiB) + b'"}')
        assert r.status_code != 413  # backups may be larger than other management bodies
        r = await c.post("/api/restore", content=b'{"x":"' + b"a" * (17 * MiB) + b'"}')
        assert r.status_code == 413
        r = await c.post("/api/chat", content=b'{"model":"tiny-a","x":"' + b"a" * (3 * MiB) + b'"}')
        assert r.status_code != 413  # images travel in model bodies as base64
        r = await c.post(
            "/api/chat", content=b"x", headers={"Content-Length": "nope", "Content-Type": "application/json"}
        )
        assert r.status_code == 400


# ---- the main port as ``llamaman`` serves it --------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def main_port(tmp_path: Path, models_dir: Path) -> Iterator[int]:
    port = _free_port()
    # NiceGUI takes a PYTEST_* variable for its own test mode; this is a real run.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env |= {
        "MODELS_DIR": str(models_dir),
        "DATA_DIR": str(tmp_path / "data"),
        "LLAMAMAN_HOST": "127.0.0.1",
        "LLAMAMAN_PORT": str(port),
        "LLAMAMAN_PROXY_PORT": "0",
        "LLAMAMAN_HEADER_TIMEOUT": "1",
        "LLAMA_SERVER_BIN": "/nonexistent/llama-server",
    }
    root = Path(__file__).resolve().parents[2]
    log = (tmp_path / "main.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, str(root / "main.py")], env=env, cwd=tmp_path,
        stdout=subprocess.DEVNULL, stderr=log,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, "main.py exited"
            with contextlib.suppress(httpx.HTTPError):
                if (
                    httpx.get(f"http://127.0.0.1:{port}/health", timeout=1, trust_env=False).status_code
                    == 200
                ):
                    break
            time.sleep(0.2)
        else:
            pytest.fail("main.py did not start within 60 s")
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


async def test_the_main_port_has_the_same_limits(main_port: int) -> None:
    answer = await exchange(
        main_port, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (5 * MiB) + b"\r\n\r\n"
    )
    assert status_of(answer) in (431, None)
    started = time.monotonic()
    answer = await exchange(main_port, b"GET /health HTTP/1.1\r\nHost: x\r\n", read_timeout=8)
    assert time.monotonic() - started < 5 and status_of(answer) == 408
    login = b"POST /api/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    answer = await exchange(main_port, login + b"Content-Length: %d\r\n\r\n{" % (300 * MiB))
    assert status_of(answer) == 413, answer[:300]
