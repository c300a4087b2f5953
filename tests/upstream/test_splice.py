"""A spliced answer: each read from llama-server passed on from the connection's own callback.

A client that cannot take more stops the reading until it is drained; a stream that breaks passes on
what arrived before it says so; a client that leaves ends it at once. Nothing is lost or reordered.
"""

from __future__ import annotations

import asyncio

import pytest

from llamaman.upstream.client import UpstreamClient
from llamaman.upstream.wire import UpstreamClosed
from tests.upstream.sse import drained_at_once, event, joined, sse_server, tokens_apart


async def test_a_client_that_cannot_take_more_stops_the_reading_until_it_is_drained() -> None:
    wrote = asyncio.Event()

    async def one_then_the_rest(writer: asyncio.StreamWriter) -> None:
        writer.write(event(0))
        await writer.drain()
        while not passed:  # the rest once the first was passed on, so that it comes in another read
            await asyncio.sleep(0.005)
        for i in range(1, 200):
            writer.write(event(i))
            await writer.drain()
        wrote.set()

    passed: list[bytes] = []
    drained = asyncio.Event()

    def backed_up(block: bytes) -> bool:
        passed.append(block)
        return False  # every block fills the client's side

    waits = 0

    async def wait_for_drain() -> None:
        nonlocal waits
        waits += 1
        await drained.wait()
        drained.clear()

    server, url = await sse_server(one_then_the_rest)
    async with server:
        client = UpstreamClient()
        try:
            r = await client.request("GET", url, "/stream")
            splicing = asyncio.ensure_future(r.splice(backed_up, wait_for_drain))
            await asyncio.wait_for(wrote.wait(), 10)  # the server wrote it all; the socket holds it
            for _ in range(20):
                await asyncio.sleep(0)
            assert len(passed) == 1 and waits == 1  # nothing read while the client is backed up
            while not splicing.done():
                drained.set()  # the client took it: one more read, then backed up again
                await asyncio.sleep(0.01)
            await splicing
            r.close()
        finally:
            await client.aclose()
    assert b"".join(passed) == joined(200)
    assert waits >= len(passed) - 1  # each block but the last waited for the client


async def test_a_stream_that_breaks_passes_on_what_arrived_then_raises() -> None:
    passed: list[bytes] = []

    async def three(writer: asyncio.StreamWriter) -> None:
        await tokens_apart(writer, n=3, gap=0.001)

    server, url = await sse_server(three, end=False)  # closed without the last chunk
    async with server:
        client = UpstreamClient()
        try:
            r = await client.request("GET", url, "/stream")
            with pytest.raises(UpstreamClosed):
                await asyncio.wait_for(r.splice(lambda b: passed.append(b) is None, drained_at_once), 10)
            r.close()
        finally:
            await client.aclose()
    assert b"".join(passed) == joined(3)


async def test_a_spliced_stream_whose_client_leaves_ends_at_once_and_its_connection_is_closed() -> None:
    endless = asyncio.Event()

    async def until_told(writer: asyncio.StreamWriter) -> None:
        writer.write(event(0))
        await writer.drain()
        await endless.wait()

    passed: list[bytes] = []
    server, url = await sse_server(until_told)
    async with server:
        client = UpstreamClient()
        try:
            r = await client.request("GET", url, "/stream")
            splicing = asyncio.ensure_future(r.splice(lambda b: passed.append(b) is None, drained_at_once))
            while not passed:
                await asyncio.sleep(0.005)
            conn = r._conn
            r.abort()  # the client left
            await asyncio.wait_for(splicing, 5)  # returns quietly
            assert conn.lost and r._sink is None
        finally:
            endless.set()
            await client.aclose()
    assert passed == [joined(1)]
