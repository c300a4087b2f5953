"""The least an HTTP-aware relay does for P1's plain chat, on uvloop with httptools' parsers: read the
request whole, parse its JSON body for the model's name, ask where it goes, write it to a kept
connection of its own, read the answer whole and write it back with fresh headers. No ASGI, no
checks, no accounting. Each step runs in the parser's callback that completes it, with no task in
between.

``bench/relay_floor.py`` runs it as a process of its own in front of a llama-server
(``serve_http``); ``bench/inprocess_floor.py`` runs it inside a LlamaMan process (this file as the
launcher of ``main.py``: ``python bench/least_relay.py main.py [args]``, with
``LLAMAMAN_FLOOR_PORT`` set), on the same event loop as LlamaMan's own servers, in two settings
(``LLAMAMAN_FLOOR_MODES``, each on the next port):

- ``lease``: every request takes a place from LlamaMan's router (``Router.lease_now``) and gives it
  back once answered, as the fast lane does;
- ``none``: the first request asks the router where the model runs; the others go there with no
  lease.
"""

from __future__ import annotations

import asyncio
import os
import runpy
import sys
from collections.abc import Callable
from typing import Any

import httptools
import orjson

# Where a model's request goes: llama-server's port, its Authorization value, and what to call once
# the answer is written (a lease's release), or None where the model has no place now.
Route = Callable[[str], "tuple[int, bytes | None, Callable[[], None] | None] | None"]

_ANSWER = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
_BUSY = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n"


# Told of each request's moments, where given: "in" (its first read), "written" (sent to
# llama-server), "back" (the answer's first read), "out" (the answer written to the client).
Mark = Callable[[str], None]
# What ``_install`` passes to the relays it starts inside LlamaMan (``bench/steps_probe.py`` sets it).
MARK: Mark | None = None


def relay_protocol(route: Route, mark: Mark | None = None) -> type[asyncio.Protocol]:
    """The client side's protocol class of a relay that sends each request where ``route`` says."""

    class Upstream(asyncio.Protocol):
        def __init__(self, client: Client) -> None:
            self.client = client
            self.parts: list[bytes] = []
            self.parser = httptools.HttpResponseParser(self)
            self.done: Callable[[], None] | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport: Any = transport

        def data_received(self, data: bytes) -> None:
            if mark is not None and not self.parts:
                mark("back")
            self.parser.feed_data(data)

        def on_body(self, body: bytes) -> None:
            self.parts.append(body)

        def on_message_complete(self) -> None:
            body, self.parts = b"".join(self.parts), []
            self.parser = httptools.HttpResponseParser(self)
            self.client.transport.write(_ANSWER % len(body) + body)
            if mark is not None:
                mark("out")
            done, self.done = self.done, None
            if done is not None:
                done()

        def connection_lost(self, exc: Exception | None) -> None:
            # llama-server closes a kept connection after a hundred requests: the next one connects.
            if self.client.upstream is self:
                self.client.upstream = None

    class Client(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport: Any = transport
            self.upstream: Upstream | None = None
            self.port = 0
            self.parts: list[bytes] = []
            self.url = b""
            self.parser = httptools.HttpRequestParser(self)

        def data_received(self, data: bytes) -> None:
            if mark is not None and not self.parts:
                mark("in")
            self.parser.feed_data(data)

        def on_url(self, url: bytes) -> None:
            self.url = url

        def on_body(self, body: bytes) -> None:
            self.parts.append(body)

        def on_message_complete(self) -> None:
            body, self.parts = b"".join(self.parts), []
            where = route(orjson.loads(body)["model"])
            if where is None:
                self.transport.write(_BUSY)
                return
            port, auth, done = where
            head = b"POST %b HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n" % self.url
            if auth is not None:
                head += b"authorization: %b\r\n" % auth
            request = head + b"content-length: %d\r\n\r\n" % len(body) + body
            if self.upstream is None or self.port != port:
                asyncio.get_running_loop().create_task(self.connect(port, request, done))
            else:
                self.upstream.done = done
                self.upstream.transport.write(request)
                if mark is not None:
                    mark("written")

        async def connect(self, port: int, request: bytes, done: Callable[[], None] | None) -> None:
            if self.upstream is not None:
                self.upstream.transport.close()
            loop = asyncio.get_running_loop()
            _, self.upstream = await loop.create_connection(lambda: Upstream(self), "127.0.0.1", port)
            self.port = port
            self.upstream.done = done
            self.upstream.transport.write(request)
            if mark is not None:
                mark("written")

        def connection_lost(self, exc: Exception | None) -> None:
            if self.upstream is not None:
                self.upstream.transport.close()

    return Client


def serve_http(port: int, upstream: int) -> None:
    """The relay as a process of its own, in front of the llama-server on ``upstream``."""
    import uvloop

    async def run() -> None:
        client = relay_protocol(lambda model: (upstream, None, None))
        server = await asyncio.get_running_loop().create_server(client, "127.0.0.1", port)
        await server.serve_forever()

    uvloop.run(run())


# ---- inside LlamaMan ------------------------------------------------------------------------------
def _routes(services: Any) -> dict[str, Route]:
    router = services.router

    def leased(model: str) -> tuple[int, bytes | None, Callable[[], None] | None] | None:
        lease = router.lease_now(model)
        if lease is None:
            return None
        return lease.instance.upstream_port, lease.auth_header, lease.release

    known: dict[str, tuple[int, bytes | None, None]] = {}

    def remembered(model: str) -> tuple[int, bytes | None, Callable[[], None] | None] | None:
        where = known.get(model)
        if where is None:
            lease = router.lease_now(model)
            if lease is None:
                return None
            where = known[model] = (lease.instance.upstream_port, lease.auth_header, None)
            lease.release()
        return where

    return {"lease": leased, "none": remembered}


def _install() -> None:
    import llamaman.app

    start = llamaman.app.LlamaMan.start
    first = int(os.environ["LLAMAMAN_FLOOR_PORT"])
    modes = os.environ.get("LLAMAMAN_FLOOR_MODES", "lease,none").split(",")

    async def start_with_relays(self: llamaman.app.LlamaMan) -> None:
        await start(self)
        routes = _routes(self)
        loop = asyncio.get_running_loop()
        for i, mode in enumerate(modes):
            await loop.create_server(relay_protocol(routes[mode], MARK), "127.0.0.1", first + i)

    llamaman.app.LlamaMan.start = start_with_relays  # type: ignore[method-assign]


if __name__ == "__main__":
    _install()
    script = sys.argv[1]
    sys.argv = sys.argv[1:]
    runpy.run_path(script, run_name="__main__")
