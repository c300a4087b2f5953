"""A tiny HTTP server that answers each request with its own body once told to, counting its
connections and the requests it holds: the other side of the pass-through client's tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from llamaman.upstream.client import UpstreamClient


@dataclass
class Server:
    """Answers each request with its body once ``go`` is set; counts connections and requests."""

    url: str = ""
    go: asyncio.Event = field(default_factory=asyncio.Event)
    connections: int = 0
    reading: int = 0  # requests the server holds now
    most: int = 0
    order: list[bytes] = field(default_factory=list)
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                body = await reader.readexactly(length)
                self.order.append(body)
                self.reading += 1
                self.most = max(self.most, self.reading)
                await self.go.wait()
                self.reading -= 1
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass


async def ask(client: UpstreamClient, server: Server, body: bytes, connections: int | None = 2) -> bytes:
    r = await client.request("POST", server.url, "/x", content=body, connections=connections)
    try:
        return await r.aread()
    finally:
        r.close()


@asynccontextmanager
async def listening(server: Any) -> AsyncIterator[None]:
    """``server.serve`` on a free loopback port, its address put in ``server.url``; the connections
    it kept in ``server.writers`` are closed once done."""
    listener = await asyncio.start_server(server.serve, "127.0.0.1", 0)
    server.url = f"http://127.0.0.1:{listener.sockets[0].getsockname()[1]}"
    try:
        yield
    finally:
        for w in server.writers:
            w.close()
        listener.close()
