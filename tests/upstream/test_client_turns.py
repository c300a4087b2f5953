"""Given a server's connections, the pass-through's client keeps to them: requests beyond them wait
their turn in order, each takes over the connection the one before it finished with, and a request
that gives up or fails never keeps a turn from the next."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from llamaman.upstream.client import UpstreamClient
from llamaman.upstream.wire import UpstreamError
from tests.upstream.answering import Server, ask


async def until(check: Callable[[], bool]) -> None:
    async with asyncio.timeout(5):
        while not check():
            await asyncio.sleep(0.002)


async def test_a_burst_keeps_to_the_servers_connections_and_is_answered_in_order(
    server: Server, client: UpstreamClient
) -> None:
    bodies = [b"%d" % i for i in range(8)]
    asking = [asyncio.create_task(ask(client, server, b)) for b in bodies]
    await until(lambda: server.reading == 2)
    await asyncio.sleep(0.02)  # time for any third connection to show up
    assert server.connections == 2 and server.order == bodies[:2]
    server.go.set()
    assert await asyncio.gather(*asking) == bodies
    # Two connections served all eight, each taking over from the one before, in order.
    assert server.connections == 2 and server.most == 2 and server.order == bodies
    assert await ask(client, server, b"after") == b"after"  # every turn was given back
    assert server.connections == 2


async def test_without_a_limit_every_request_has_a_connection_at_once(
    server: Server, client: UpstreamClient
) -> None:
    asking = [asyncio.create_task(ask(client, server, b"%d" % i, connections=None)) for i in range(5)]
    await until(lambda: server.reading == 5)
    server.go.set()
    await asyncio.gather(*asking)


async def test_a_request_that_gives_up_in_line_leaves_it_and_takes_no_turn(
    server: Server, client: UpstreamClient
) -> None:
    first = [asyncio.create_task(ask(client, server, b"%d" % i)) for i in range(2)]
    await until(lambda: server.reading == 2)
    leaving = asyncio.create_task(ask(client, server, b"leaves"))
    staying = asyncio.create_task(ask(client, server, b"stays"))
    await asyncio.sleep(0.01)
    leaving.cancel()
    server.go.set()
    assert await staying == b"stays"
    await asyncio.gather(*first)
    with pytest.raises(asyncio.CancelledError):
        await leaving
    assert b"leaves" not in server.order and server.connections == 2
    assert await ask(client, server, b"after") == b"after"


async def test_a_turn_handed_over_as_its_request_gives_up_passes_to_the_next(
    server: Server, client: UpstreamClient
) -> None:
    server.go.set()
    held = await client.request("POST", server.url, "/x", content=b"held", connections=1)
    await held.aread()
    leaving = asyncio.create_task(ask(client, server, b"leaves", connections=1))
    staying = asyncio.create_task(ask(client, server, b"stays", connections=1))
    await asyncio.sleep(0.01)
    held.close()  # the turn goes to "leaves", which is cancelled before it can run
    leaving.cancel()
    assert await asyncio.wait_for(staying, 5) == b"stays"
    with pytest.raises(asyncio.CancelledError):
        await leaving
    assert b"leaves" not in server.order


async def test_a_request_that_fails_gives_its_turn_to_the_next(client: UpstreamClient) -> None:
    # Nothing listens: each request fails to connect, and still the next one gets its turn.
    for _ in range(3):
        with pytest.raises(UpstreamError):
            refused = client.request("POST", "http://127.0.0.1:9", "/x", content=b"{}", connections=1)
            await asyncio.wait_for(refused, 5)  # a turn kept by a failed request: waits for ever
