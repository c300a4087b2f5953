"""A caller who asks for a long generation and hangs up at once must not leave its request open at
llama-server. On the fast lane the request is written to llama-server from the parser's callback,
before the task that serves it has done anything: the hang-up must still reach the request already
written. The guard: a lost connection aborts its exchange, and the abort closes the connection to
llama-server the request was written on (without it, the hang-up is not even recorded while the
generation runs on).

What llama-server does once that connection is closed is up to its build, and not LlamaMan's: a
stream it ends at its next write, but the xllamacpp build these tests run goes on with a generation
that comes whole until it ends by itself (measured: a hung-up request ran its 4,071 tokens to the end
of its context). So the test holds LlamaMan to its own part, that llama-server's end of the connection
is closed by the other side, and leaves the generation to end by itself: in a slot of its own, so
that the next request does not wait for it."""

from __future__ import annotations

import socket
from functools import partial
from typing import Any

import psutil
import pytest

from llamaman.app import LlamaMan
from llamaman.core.exchange import Exchange
from llamaman.testing.tiny_gguf import expected_text
from llamaman.upstream.client import Pending
from tests.proxy.lane_ports import Ports, client, request, settled

pytestmark = [pytest.mark.auth, pytest.mark.llama]

HI = [{"role": "user", "content": "hi"}]
# Four slots of 1,024 tokens: each hung-up generation runs on in a slot of its own (up to its
# context's end, seconds on a loaded machine), and the short requests between them find one free.
PRESET = {"ctx_size": 4096, "parallel": 4}
LONG = 100000
# llama-server's end of a connection LlamaMan has closed: the close arrived and llama-server has not
# answered it (it is still generating), or it has closed its end too; None: the socket is gone.
CLOSED_BY_LLAMAMAN = {psutil.CONN_CLOSE_WAIT, psutil.CONN_LAST_ACK, psutil.CONN_CLOSE, None}


def server_end(pid: int, port: int) -> str | None:
    """The TCP state of llama-server's end (process ``pid``) of the connection from local ``port``."""
    for conn in psutil.Process(pid).net_connections(kind="tcp"):
        if conn.raddr and conn.raddr.port == port:
            return str(conn.status)
    return None


def closed_by_llamaman(pid: int, port: int) -> bool:
    return server_end(pid, port) in CLOSED_BY_LLAMAMAN


async def test_a_caller_who_hangs_up_as_it_asks_has_the_request_written_on_the_lane_dropped_at_llama_server(
    services: LlamaMan, proxy_pair: Ports
) -> None:
    await services.presets.put("tiny-a.gguf", PRESET)
    m = await services.router.load("tiny-a")
    assert m.proc.pid is not None
    seen: list[Exchange] = []
    services.relay.add_observer(seen.append)
    written: list[int] = []  # the local port of each connection a request was written on at once
    send_now = services.relay.send_now

    def recorded(*args: Any) -> Pending | None:
        pending = send_now(*args)
        if pending is not None:
            transport = pending.response._conn.transport
            assert transport is not None
            written.append(transport.get_extra_info("sockname")[1])
        return pending

    services.relay.send_now = recorded  # type: ignore[method-assign]
    _, key = await services.auth.keys.create("hangs-up")
    long: dict[str, Any] = {"model": "tiny-a", "messages": HI, "max_tokens": LONG}
    for n in (3, 4, 5):
        # A plain chat leaves a kept connection to llama-server, so the next request is written
        # to it at once, from the parser's callback.
        async with client(proxy_pair.lane.url, {"Authorization": f"Bearer {key}"}) as c:
            short = {"model": "tiny-a", "messages": HI, "max_tokens": n}
            r = await c.post("/v1/chat/completions", json=short)
            assert r.json()["choices"][0]["message"]["content"] == expected_text("A", n)
        before, kept = proxy_pair.taken, len(written)
        # The request and the hang-up are both in the port's socket before its event loop runs again
        # (this test runs on that loop, and a blocking socket does not give it a turn).
        with socket.create_connection(("127.0.0.1", proxy_pair.lane.port)) as sock:
            sock.sendall(request(key, long))
            sock.shutdown(socket.SHUT_WR)
        assert await settled(lambda: any(ex.status == 499 for ex in seen[-1:])), (
            "the hang-up was not recorded"
        )
        assert proxy_pair.taken == before + 1  # the lane took it
        # ... and wrote it from the parser's callback, on the kept connection.
        assert len(written) == kept + 1
        port = written[-1]
        closed = await settled(partial(closed_by_llamaman, m.proc.pid, port))
        assert closed, f"llama-server's end of the request stays {server_end(m.proc.pid, port)}"
        assert services.router.slot(m).inflight == 0 and len(services.relay.inflight) == 0
