"""``send_now``: a request written at once on a kept connection, its answer awaited later. It keeps
to the server's turns, and a request given up before anyone waits for its answer closes its
connection and passes its turn on."""

from __future__ import annotations

import asyncio

from llamaman.upstream.client import UpstreamClient
from tests.upstream.answering import Server, ask


async def test_a_request_is_written_at_once_only_on_a_kept_connection_with_a_turn_free(
    server: Server, client: UpstreamClient
) -> None:
    server.go.set()
    assert client.send_now(server.url, "/x", headers=[], content=b"a", connections=2) is None  # none kept
    assert await ask(client, server, b"first") == b"first"
    sent = client.send_now(server.url, "/x", headers=[(b"x-a", b"1")], content=b"second", connections=2)
    assert sent is not None
    assert server.order[-1] == b"first"  # written, not yet read by the server: nothing awaited
    response = await sent.head()
    assert response.status_code == 200 and await response.aread() == b"second"
    response.close()
    assert server.connections == 1  # the kept connection served both
    assert await ask(client, server, b"after") == b"after"  # the turn was given back


async def test_no_request_is_written_past_its_turn(server: Server, client: UpstreamClient) -> None:
    warm = [asyncio.create_task(ask(client, server, b"warm %d" % i)) for i in range(2)]
    while server.reading < 2:
        await asyncio.sleep(0.002)
    server.go.set()
    await asyncio.gather(*warm)  # two connections kept
    server.go.clear()
    held = asyncio.create_task(ask(client, server, b"held", connections=1))
    await asyncio.sleep(0.02)
    # A kept connection is idle, but the server's one turn is taken.
    assert client.send_now(server.url, "/x", headers=[], content=b"no", connections=1) is None
    assert b"no" not in server.order
    server.go.set()
    assert await held == b"held"
    in_line = asyncio.create_task(ask(client, server, b"in line", connections=1))
    assert await in_line == b"in line"


async def test_a_request_given_up_before_its_answer_is_awaited_frees_its_connection_and_turn(
    server: Server, client: UpstreamClient
) -> None:
    server.go.set()
    assert await ask(client, server, b"warm", connections=1) == b"warm"
    server.go.clear()
    sent = client.send_now(server.url, "/x", headers=[], content=b"dropped", connections=1)
    assert sent is not None
    waiting = asyncio.create_task(ask(client, server, b"next", connections=1))
    await asyncio.sleep(0.02)
    assert not waiting.done()  # behind the dropped one's turn
    sent.abort()
    sent.abort()  # once is enough
    server.go.set()
    assert await asyncio.wait_for(waiting, 5) == b"next"
    assert server.connections == 2  # the dropped request's connection was closed


async def test_a_kept_connection_the_server_closed_is_asked_again_on_a_fresh_one(
    server: Server, client: UpstreamClient
) -> None:
    server.go.set()
    assert await ask(client, server, b"warm") == b"warm"
    sent = client.send_now(server.url, "/x", headers=[], content=b"again", connections=2)
    assert sent is not None
    server.writers[0].close()  # the server drops the kept connection before answering on it
    response = await asyncio.wait_for(sent.head(), 5)
    assert await response.aread() == b"again"
    response.close()
    assert server.connections == 2
