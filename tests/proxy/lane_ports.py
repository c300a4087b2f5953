"""Two proxy ports of one box, with and without the fast lane, and plain HTTP/1.1 on a socket: what
the lane's tests need to compare the two ways and to send what no HTTP client would."""

from __future__ import annotations

import asyncio
import inspect
import json
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httptools
import httpx
import pytest

from llamaman.app import LlamaMan
from llamaman.instances.instance import ManagedInstance
from llamaman.proxy.app import ProxyServer, create_proxy_app
from llamaman.proxy.fast_protocol import FastLaneProtocol


class Ports:
    """Two proxy servers of one box: ``lane`` serves as LlamaMan does, ``full`` without the lane;
    ``taken`` counts the answers the lane gave, ``waited`` the requests that queued on it."""

    def __init__(self, services: LlamaMan) -> None:
        lane = services.fast_lane()
        assert lane is not None
        self.taken = 0
        answer = lane.answer

        async def counted(*args: Any) -> Any:
            self.taken += 1
            return await answer(*args)

        lane.answer = counted  # type: ignore[method-assign,assignment]
        self.waited = 0  # requests that waited for a place on the lane
        wait = lane.wait

        async def waiting(*args: Any) -> Any:
            self.waited += 1
            return await wait(*args)

        lane.wait = waiting  # type: ignore[method-assign,assignment]
        self.lane = ProxyServer(create_proxy_app(services), "127.0.0.1", 0, lane=lane)
        self.full = ProxyServer(create_proxy_app(services), "127.0.0.1", 0)


def client(url: str, headers: dict[str, str] | None = None) -> httpx.AsyncClient:
    """An HTTP client for one of the ports, sending ``headers`` with every request."""
    return httpx.AsyncClient(base_url=url, headers=headers, timeout=60, trust_env=False)


class Answers:
    """Responses read off one connection, in order."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.done: list[tuple[int, bytes]] = []
        self._body = b""

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        self.done.append((self.parser.get_status_code(), self._body))
        self._body = b""

    async def read(self, reader: asyncio.StreamReader, n: int) -> list[tuple[int, bytes]]:
        while len(self.done) < n:
            data = await asyncio.wait_for(reader.read(65536), 60)
            assert data, f"the connection closed after {len(self.done)} of {n} answers"
            self.parser.feed_data(data)
        got, self.done = self.done[:n], self.done[n:]
        return got


def request(key: str, body: dict[str, Any], target: str = "/v1/chat/completions", extra: str = "") -> bytes:
    raw = json.dumps(body).encode()
    head = (
        f"POST {target} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(raw)}\r\n{extra}\r\n"
    )
    return head.encode() + raw


def text_of(answer: tuple[int, bytes]) -> str:
    status, body = answer
    assert status == 200, body
    return str(json.loads(body)["choices"][0]["message"]["content"])


async def exchange(port: int, data: bytes) -> list[tuple[int, bytes]]:
    """Every answer to ``data`` written on a new connection, read until the server closes it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answers = Answers()
    try:
        writer.write(data)
        while chunk := await asyncio.wait_for(reader.read(65536), 60):
            answers.parser.feed_data(chunk)
    except httptools.HttpParserError:  # pragma: no cover - what the server sent is the failure shown
        raise AssertionError(f"not HTTP: {answers.done}") from None
    finally:
        writer.close()
    return answers.done


class StreamAnswer:
    """A chunked SSE answer read off a socket: its text and its usage once it is done."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.body = b""
        self.done = False

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.done = True

    async def read(self, reader: asyncio.StreamReader) -> None:
        """The rest of the answer, read a little at a time."""
        while not self.done:
            data = await asyncio.wait_for(reader.read(4096), 60)
            assert data, "the connection closed before the answer ended"
            self.parser.feed_data(data)
            await asyncio.sleep(0)

    def text_and_usage(self) -> tuple[str, dict[str, Any]]:
        text, usage = "", {}
        for line in self.body.split(b"\n"):
            if line.startswith(b"data: {"):
                event = json.loads(line[6:])
                usage = event.get("usage") or usage
                for choice in event.get("choices") or []:  # a chat's delta, or a completion's text
                    text += (choice.get("delta") or {}).get("content") or choice.get("text") or ""
        return text, usage


def small_send_buffers(monkeypatch: pytest.MonkeyPatch) -> list[FastLaneProtocol]:
    """A slow network for the lane's connections from now on: the kernel holds little of what
    LlamaMan writes to a client, so what is held, LlamaMan holds. Returns the connections' protocols
    as they are made."""
    made = FastLaneProtocol.connection_made
    lanes: list[FastLaneProtocol] = []

    def small(self: FastLaneProtocol, transport: Any) -> None:
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        lanes.append(self)
        made(self, transport)

    monkeypatch.setattr(FastLaneProtocol, "connection_made", small)
    return lanes


async def narrow_connection(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection whose receive window is small: a client that does not read soon backs up."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return await asyncio.open_connection(sock=sock)


async def settled(check: Callable[[], bool | Awaitable[bool]], timeout: float = 10) -> bool:
    """Whether ``check`` comes true within ``timeout`` seconds, asked every 10 ms (the caller asserts
    what that means)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.01)


async def slots(services: LlamaMan, m: ManagedInstance) -> list[dict[str, Any]]:
    """The instance's llama-server slots, by its own ``/slots``."""
    got = await services.http.get(f"{m.base_url}/slots", headers=m.proc.auth_headers, timeout=10)
    return list(got.json())


async def generating(services: LlamaMan, m: ManagedInstance) -> bool:
    """Whether one of the instance's llama-server slots is processing."""
    return any(s.get("is_processing") for s in await slots(services, m))


async def idle(services: LlamaMan, m: ManagedInstance) -> bool:
    return not await generating(services, m)


async def whereabouts(services: LlamaMan, m: ManagedInstance) -> str:
    """Where the box's requests stand, for a failure message: the in-flight list, the requests written
    to the instance's llama-server still waiting for their answer's head, and its slots as it
    reports them (whether each is processing, and the tokens it has made)."""
    inflight = [
        (r["state"], r["stream"], r["tokens"], r["age_s"]) for r in services.relay.inflight.snapshot()
    ]
    waiting = services.relay.upstream.waiting(m.base_url)
    try:
        held: Any = [(s.get("is_processing"), _decoded(s)) for s in await slots(services, m)]
    except Exception as exc:  # the message must still be made: say why the slots are missing
        held = f"not read: {exc!r}"
    return (
        f"in flight (state, stream, tokens, age): {inflight}; written, no head yet: {waiting}; slots: {held}"
    )


def _decoded(slot: dict[str, Any]) -> Any:
    """The tokens a slot has made, from ``/slots`` (an object in some llama-server builds, a list of
    one in others)."""
    following = slot.get("next_token")
    if isinstance(following, list):
        following = following[0] if following else {}
    return following.get("n_decoded") if isinstance(following, dict) else None
