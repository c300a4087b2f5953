"""While many streams are relayed at once, each passes on what arrived on one shared beat.

A model server here streams tokens as chunked SSE, as llama-server does; the relay's reader keeps to
the beat only when enough streams run, never holds an answer's first blocks, and loses nothing.
Both readers keep to it: the task that iterates the body (``aiter_raw``) and the splice that passes
each block on from the connection's own callback (``splice``).
"""

from __future__ import annotations

import asyncio

import pytest

from llamaman.upstream import pacing
from llamaman.upstream.client import UpstreamClient
from llamaman.upstream.pacing import Pacer
from llamaman.upstream.wire import UpstreamResponse
from tests.upstream.sse import data, drained_at_once, event, joined, sse_server, tokens_apart

READERS = ("aiter_raw", "splice")


async def read_blocks(r: UpstreamResponse, reader: str) -> list[bytes]:
    """The answer's body as the blocks the reader passes on."""
    if reader == "aiter_raw":
        return [b async for b in r.aiter_raw(paced=True)]
    blocks: list[bytes] = []
    await r.splice(lambda b: blocks.append(b) is None, drained_at_once)
    return blocks


@pytest.fixture
def pacer(monkeypatch: pytest.MonkeyPatch) -> Pacer:
    p = Pacer(interval=0.05, min_streams=1)
    monkeypatch.setattr(pacing, "PACER", p)
    monkeypatch.setattr("llamaman.upstream.wire.PACER", p)
    return p


async def _blocks(url: str, reader: str) -> list[bytes]:
    client = UpstreamClient()
    try:
        r = await client.request("GET", url, "/stream")
        out = await read_blocks(r, reader)
        r.close()
        return out
    finally:
        await client.aclose()


@pytest.mark.parametrize("reader", READERS)
async def test_a_paced_stream_passes_on_what_arrived_between_beats_in_one_block(
    pacer: Pacer, reader: str
) -> None:
    server, url = await sse_server(tokens_apart)
    async with server:
        blocks = await _blocks(url, reader)
    assert b"".join(blocks) == joined(60)  # nothing lost, nothing reordered
    # 60 tokens 3 ms apart take at least 0.18 s: at one block per 0.05 s beat (plus the first two),
    # a handful of blocks, however the machine schedules the writes.
    assert len(blocks) <= 2 + 0.18 / 0.05 + 3, len(blocks)
    assert pacer.streams == 0  # the stream is counted out when it ends


@pytest.mark.parametrize("reader", READERS)
async def test_below_the_stream_count_nothing_is_held(monkeypatch: pytest.MonkeyPatch, reader: str) -> None:
    p = Pacer(interval=30.0, min_streams=2)  # a beat that would time the test out
    monkeypatch.setattr("llamaman.upstream.wire.PACER", p)
    server, url = await sse_server(tokens_apart)
    async with server:
        blocks = await asyncio.wait_for(_blocks(url, reader), 10)
    assert b"".join(blocks) == joined(60)


@pytest.mark.parametrize("reader", READERS)
async def test_the_first_blocks_of_an_answer_are_never_held(
    monkeypatch: pytest.MonkeyPatch, reader: str
) -> None:
    p = Pacer(interval=30.0, min_streams=1)
    monkeypatch.setattr("llamaman.upstream.wire.PACER", p)
    seen = [asyncio.Event(), asyncio.Event()]
    passed: list[bytes] = []
    arrived = asyncio.Event()

    async def two_then_wait(writer: asyncio.StreamWriter) -> None:
        for i, told in enumerate(seen):
            writer.write(event(i))
            await writer.drain()
            await told.wait()  # the next token only once the reader passed this one on

    def sink(block: bytes) -> bool:
        passed.append(block)
        arrived.set()
        return True

    server, url = await sse_server(two_then_wait)
    async with server:
        client = UpstreamClient()
        try:
            r = await client.request("GET", url, "/stream")
            if reader == "aiter_raw":
                it = r.aiter_raw(paced=True)
                for i, told in enumerate(seen):
                    block = await asyncio.wait_for(it.__anext__(), 5)  # a held block waits 30 s
                    assert block == data(i)
                    told.set()
                await it.aclose()
            else:
                splicing = asyncio.ensure_future(r.splice(sink, drained_at_once))
                for i, told in enumerate(seen):
                    await asyncio.wait_for(arrived.wait(), 5)  # a held block waits 30 s
                    arrived.clear()
                    assert passed[i] == data(i)
                    told.set()
                r.abort()  # the rest would keep to the 30 s beat
                await asyncio.wait_for(splicing, 5)
            r.close()
        finally:
            await client.aclose()


async def test_one_timer_sounds_the_beat_for_every_waiter_and_a_cancelled_one_leaves_the_rest() -> None:
    p = Pacer(interval=0.01, min_streams=1)
    waiters = [p.beat() for _ in range(5)]
    waiters[0].cancel()  # its client left
    called = asyncio.Event()
    p.at_beat(called.set)  # a spliced stream's resumption, on the same timer
    await asyncio.wait_for(asyncio.gather(*waiters[1:], called.wait()), 5)
    assert all(w.done() for w in waiters)


def test_an_interval_of_zero_turns_pacing_off() -> None:
    p = Pacer(interval=0.0, min_streams=1)
    p.streams = 100
    assert not p.engaged


def test_the_beat_grows_with_the_streams_so_the_blocks_per_second_stay_until_its_longest() -> None:
    p = Pacer(interval=0.02, min_streams=8, longest=0.05)
    lengths = {}
    for streams in (1, 8, 12, 16, 20, 32, 1000):
        p.streams = streams
        lengths[streams] = round(p.length(), 4)
    assert lengths == {1: 0.02, 8: 0.02, 12: 0.03, 16: 0.04, 20: 0.05, 32: 0.05, 1000: 0.05}
    fixed = Pacer(interval=0.02, min_streams=8)  # no longest given: the beat stays as it is
    fixed.streams = 64
    assert fixed.length() == 0.02


async def test_the_timer_sounds_the_beat_for_the_streams_running_when_it_is_set() -> None:
    p = Pacer(interval=0.01, min_streams=1, longest=0.2)
    p.streams = 40  # 0.01 s at one stream: 0.4 s at forty, so the longest
    loop = asyncio.get_running_loop()
    start = loop.time()
    await asyncio.wait_for(p.beat(), 5)
    assert loop.time() - start >= 0.19
