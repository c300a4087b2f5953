"""``UpstreamResponse.on_whole``: told once an answer is in whole, from the parser's callback, with
the whole body still there to read; never with part of a body a reader already took."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from llamaman.upstream.client import UpstreamClient
from llamaman.upstream.wire import UpstreamResponse
from tests.upstream.answering import listening

FIRST, REST = b"x" * 1000, b"y" * 500


class SplitServer:
    """Answers with its head and the body's first part at once, the rest once ``go`` is set."""

    def __init__(self) -> None:
        self.go = asyncio.Event()
        self.url = ""
        self.writers: list[asyncio.StreamWriter] = []

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        head = await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0]))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(FIRST + REST), FIRST))
        await writer.drain()
        await self.go.wait()
        writer.write(REST)
        await writer.drain()


@pytest.fixture
async def split() -> AsyncIterator[SplitServer]:
    s = SplitServer()
    async with listening(s):
        yield s


async def whole_when_told(response: UpstreamResponse) -> asyncio.Future[bytes | None]:
    told: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
    response.on_whole = lambda r: told.set_result(r.whole_body())
    return told


async def test_an_answer_in_two_reads_nobody_read_yet_is_told_with_its_whole_body(
    split: SplitServer, client: UpstreamClient
) -> None:
    response = await client.request("POST", split.url, "/x", content=b"q")
    told = await whole_when_told(response)
    split.go.set()
    assert await told == FIRST + REST
    assert await response.aread() == FIRST + REST  # still there for the reader
    response.close()


async def test_an_answer_a_reader_took_part_of_is_not_offered_whole(
    split: SplitServer, client: UpstreamClient
) -> None:
    response = await client.request("POST", split.url, "/x", content=b"q")
    told = await whole_when_told(response)
    reading = response.aiter_raw()
    assert await anext(reading) == FIRST  # the first part, taken before the rest came
    split.go.set()
    assert await told is None  # the rest alone is not the answer
    assert b"".join([part async for part in reading]) == REST
    response.close()
