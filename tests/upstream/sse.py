"""A model server that streams chunked SSE as llama-server does, each event written when its script
says: the other side of the stream readers' tests."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
Script = Callable[[asyncio.StreamWriter], Awaitable[object]]


def data(i: int) -> bytes:
    return b'data: {"i":%d}\n\n' % i


def event(i: int) -> bytes:
    """Event ``i`` as one HTTP chunk."""
    return b"%x\r\n%s\r\n" % (len(data(i)), data(i))


def joined(n: int) -> bytes:
    """The body of events 0 to n-1, chunked framing removed."""
    return b"".join(data(i) for i in range(n))


async def sse_server(script: Script, *, end: bool = True) -> tuple[asyncio.Server, str]:
    """A server answering every request with the stream its script writes; ``end``: whether the
    stream's last chunk follows (without it, the connection just closes)."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(HEAD)
        await script(writer)
        if end:
            writer.write(b"0\r\n\r\n")
        await writer.drain()
        if not end:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def drained_at_once() -> None:
    """A splice's wait for its client to drain, for a client that is never backed up."""


async def tokens_apart(writer: asyncio.StreamWriter, n: int = 60, gap: float = 0.003) -> None:
    for i in range(n):
        writer.write(event(i))
        await writer.drain()
        await asyncio.sleep(gap)
