"""The relay behind the floor figures (``bench/least_relay.py``): it must relay what the benchmarks
say it relays, or its figures mean nothing."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable

import pytest

from bench.least_relay import relay_protocol

ANSWER = json.dumps({"choices": [{"message": {"content": "abcdefgh"}}]}).encode()
CHAT = json.dumps({"model": "tiny-a", "messages": [{"role": "user", "content": "hi"}]}).encode()


class Upstream:
    """A server that answers every request with ``ANSWER`` and keeps what it was sent."""

    def __init__(self) -> None:
        self.requests: list[bytes] = []
        self.connections = 0
        self.writers: list[asyncio.StreamWriter] = []

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            length = next(int(v) for k, v in _headers(head) if k == b"content-length")
            self.requests.append(head + await reader.readexactly(length))
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%b" % (len(ANSWER), ANSWER))
            await writer.drain()


def _headers(head: bytes) -> list[tuple[bytes, bytes]]:
    lines = head.split(b"\r\n")[1:]
    return [(k.strip().lower(), v.strip()) for k, _, v in (line.partition(b":") for line in lines if line)]


async def _answer(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(int(v) for k, v in _headers(head) if k == b"content-length")
    return head, await reader.readexactly(length)


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[Upstream, int]]:
    up = Upstream()
    server = await asyncio.start_server(up.serve, "127.0.0.1", 0)
    yield up, server.sockets[0].getsockname()[1]
    for writer in up.writers:
        writer.close()
    server.close()


async def _relay(
    route: Callable[[str], object], mark: Callable[[str], None] | None = None
) -> tuple[asyncio.Server, int]:
    protocol = relay_protocol(route, mark)  # type: ignore[arg-type]
    server = await asyncio.get_running_loop().create_server(protocol, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def _chat() -> bytes:
    head = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
    return head + b"content-length: %d\r\n\r\n%b" % (len(CHAT), CHAT)


async def test_chats_on_one_connection_reach_the_server_with_its_key_and_their_answers_come_back(
    upstream: tuple[Upstream, int],
) -> None:
    up, port = upstream
    asked: list[str] = []
    released: list[int] = []

    def route(model: str) -> tuple[int, bytes, Callable[[], None]]:
        asked.append(model)
        return port, b"Bearer inner", lambda: released.append(len(up.requests))

    server, relay_port = await _relay(route)
    reader, writer = await asyncio.open_connection("127.0.0.1", relay_port)
    for _ in range(3):
        writer.write(_chat())
        head, body = await _answer(reader)
        assert head.startswith(b"HTTP/1.1 200 OK") and body == ANSWER
    writer.close()
    server.close()
    assert asked == ["tiny-a"] * 3
    assert up.connections == 1  # kept, as LlamaMan keeps its own
    assert [r.split(b"\r\n\r\n", 1)[1] for r in up.requests] == [CHAT] * 3
    assert all((b"authorization", b"Bearer inner") in _headers(r.split(b"\r\n\r\n")[0]) for r in up.requests)
    assert released == [1, 2, 3]  # each place given back once its answer is written


async def test_a_model_with_no_place_now_is_answered_503_and_nothing_goes_upstream(
    upstream: tuple[Upstream, int],
) -> None:
    up, _ = upstream
    server, relay_port = await _relay(lambda model: None)
    reader, writer = await asyncio.open_connection("127.0.0.1", relay_port)
    writer.write(_chat())
    head, _ = await _answer(reader)
    assert head.startswith(b"HTTP/1.1 503")
    assert up.requests == []
    writer.close()
    server.close()


async def test_each_chat_is_marked_in_written_back_and_out_in_that_order_once(
    upstream: tuple[Upstream, int],
) -> None:
    """The moments ``bench/steps_probe.py`` times the relay's two spans by."""
    _, port = upstream
    marks: list[str] = []
    server, relay_port = await _relay(lambda model: (port, None, None), marks.append)
    reader, writer = await asyncio.open_connection("127.0.0.1", relay_port)
    for _ in range(2):  # the first connects to the server, the second takes the kept connection
        writer.write(_chat())
        await _answer(reader)
    writer.close()
    server.close()
    assert marks == ["in", "written", "back", "out"] * 2
