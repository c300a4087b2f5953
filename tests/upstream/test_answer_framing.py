"""How the pass-through client knows an answer is whole when the server closes the connection after
it: an answer with neither a length nor chunks ends with the connection and is whole; one whose
length or chunks were cut short by the close is an error, never a short answer taken as whole."""

from __future__ import annotations

import asyncio

import pytest

from llamaman.upstream.client import UpstreamClient
from llamaman.upstream.wire import UpstreamClosed
from tests.upstream.answering import listening


class ClosingServer:
    """Reads one request, writes ``answer`` and closes the connection."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.url = ""
        self.writers: list[asyncio.StreamWriter] = []

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        writer.write(self.answer)
        await writer.drain()
        writer.close()


async def answer_to(server: ClosingServer) -> bytes:
    client = UpstreamClient()
    try:
        async with listening(server):
            r = await client.request("POST", server.url, "/x", content=b"{}")
            try:
                return await r.aread()
            finally:
                r.close()
    finally:
        await client.aclose()


async def test_an_answer_without_length_or_chunks_ends_with_the_connection_and_is_whole() -> None:
    server = ClosingServer(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nthe whole answer")
    assert await answer_to(server) == b"the whole answer"


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\ncut short",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n9\r\ncut short\r\n",
        b"HTTP/1.1 200 OK\r\nconTENT-length: 100\r\n\r\ncut short",
    ],
    ids=["length", "chunks", "length-in-any-case"],
)
async def test_an_answer_cut_short_by_the_close_is_an_error_not_a_short_answer(answer: bytes) -> None:
    with pytest.raises(UpstreamClosed):
        await answer_to(ClosingServer(answer))
