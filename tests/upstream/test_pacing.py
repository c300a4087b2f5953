"""While many streams are relayed at once, each passes on what arrived on one shared beat.

A model server here streams tokens as chunked SSE, as llama-server does; the relay's reader keeps to
the beat only when enough streams run, never holds an answer's first blocks, and loses nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from llamaman.upstream import pacing
from llamaman.upstream.client import UpstreamClient
from llamaman.upstream.pacing import Pacer

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


def _event(i: int) -> bytes:
    data = b'data: {"i":%d}\n\n' % i
    return b"%x\r\n%s\r\n" % (len(data), data)


async def _server(script: Callable[[asyncio.StreamWriter], object]) -> tuple[asyncio.Server, str]:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(HEAD)
        await script(writer)  # type: ignore[misc]
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


@pytest.fixture
def pacer(monkeypatch: pytest.MonkeyPatch) -> Pacer:
    p = Pacer(interval=0.05, min_streams=1)
    monkeypatch.setattr(pacing, "PACER", p)
    monkeypatch.setattr("llamaman.upstream.wire.PACER", p)
    return p


async def _blocks(url: str, paced: bool) -> list[bytes]:
    client = UpstreamClient()
    try:
        r = await client.request("GET", url, "/stream")
        out = [b async for b in r.aiter_raw(paced=paced)]
        r.close()
        return out
    finally:
        await client.aclose()


async def _tokens_apart(writer: asyncio.StreamWriter, n: int = 60, gap: float = 0.003) -> None:
    for i in range(n):
        writer.write(_event(i))
        await writer.drain()
        await asyncio.sleep(gap)


def _joined(n: int = 60) -> bytes:
    return b"".join(b'data: {"i":%d}\n\n' % i for i in range(n))


async def test_a_paced_stream_passes_on_what_arrived_between_beats_in_one_block(pacer: Pacer) -> None:
    server, url = await _server(_tokens_apart)
    async with server:
        blocks = await _blocks(url, paced=True)
    assert b"".join(blocks) == _joined()  # nothing lost, nothing reordered
    # 60 tokens 3 ms apart take at least 0.18 s: at one block per 0.05 s beat (plus the first two),
    # a handful of blocks, however the machine schedules the writes.
    assert len(blocks) <= 2 + 0.18 / 0.05 + 3, len(blocks)
    assert pacer.streams == 0  # the stream is counted out when it ends


async def test_below_the_stream_count_nothing_is_held(monkeypatch: pytest.MonkeyPatch) -> None:
    p = Pacer(interval=30.0, min_streams=2)  # a beat that would time the test out
    monkeypatch.setattr("llamaman.upstream.wire.PACER", p)
    server, url = await _server(_tokens_apart)
    async with server:
        blocks = await asyncio.wait_for(_blocks(url, paced=True), 10)
    assert b"".join(blocks) == _joined()


async def test_the_first_blocks_of_an_answer_are_never_held(monkeypatch: pytest.MonkeyPatch) -> None:
    p = Pacer(interval=30.0, min_streams=1)
    monkeypatch.setattr("llamaman.upstream.wire.PACER", p)
    seen = [asyncio.Event(), asyncio.Event()]

    async def two_then_wait(writer: asyncio.StreamWriter) -> None:
        for i, event in enumerate(seen):
            writer.write(_event(i))
            await writer.drain()
            await event.wait()  # the next token only once the reader passed this one on

    server, url = await _server(two_then_wait)
    async with server:
        client = UpstreamClient()
        try:
            r = await client.request("GET", url, "/stream")
            it = r.aiter_raw(paced=True)
            for i, event in enumerate(seen):
                block = await asyncio.wait_for(it.__anext__(), 5)  # a held block waits 30 s
                assert block == b'data: {"i":%d}\n\n' % i
                event.set()
            await it.aclose()
            r.close()
        finally:
            await client.aclose()


async def test_one_timer_sounds_the_beat_for_every_waiter_and_a_cancelled_one_leaves_the_rest() -> None:
    p = Pacer(interval=0.01, min_streams=1)
    waiters = [p.beat() for _ in range(5)]
    waiters[0].cancel()  # its client left
    await asyncio.wait_for(asyncio.gather(*waiters[1:]), 5)
    assert all(w.done() for w in waiters)


def test_an_interval_of_zero_turns_pacing_off() -> None:
    p = Pacer(interval=0.0, min_streams=1)
    p.streams = 100
    assert not p.engaged
