"""A caller who asks for a long generation and hangs up at once must leave nothing running. On the fast
lane the request is written to llama-server from the parser's callback, before the task that serves
it has done anything: the hang-up must still reach the request already written, or each such caller
would keep llama-server's one slot busy for a whole generation. The guard: a lost connection aborts
its exchange, and the abort closes the connection to llama-server the request was written on (without
it, the hang-up is not even recorded while the generation runs on)."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import pytest

from llamaman.app import LlamaMan
from llamaman.core.exchange import Exchange
from llamaman.instances.supervisor import ManagedInstance
from llamaman.testing.tiny_gguf import expected_text
from tests.proxy.lane_ports import Ports, client, request

pytestmark = [pytest.mark.auth, pytest.mark.llama]

HI = [{"role": "user", "content": "hi"}]
# Far more tokens than the test waits for, however fast the machine (with the hang-up not passed on,
# these were still generating after the 10 s the test waits for its record): a generation left
# running would still run when the test looks. llama-server notices a closed connection within a
# few seconds and stops.
CTX = 131072
LONG = 120000


async def processing(services: LlamaMan, m: ManagedInstance) -> bool:
    slots = (await services.http.get(f"{m.base_url}/slots", headers=m.proc.auth_headers)).json()
    return any(s.get("is_processing") for s in slots)


async def eventually_idle(services: LlamaMan, m: ManagedInstance, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while await processing(services, m):
        assert time.monotonic() < deadline, "llama-server still generates for a caller who hung up"
        await asyncio.sleep(0.05)


async def test_a_caller_who_hangs_up_as_it_asks_leaves_no_generation_running_on_the_lane(
    services: LlamaMan, proxy_pair: Ports
) -> None:
    await services.presets.put("tiny-a.gguf", {"ctx_size": CTX})
    m = await services.router.load("tiny-a")
    seen: list[Exchange] = []
    services.relay.add_observer(seen.append)
    _, key = await services.auth.keys.create("hangs-up")
    long: dict[str, Any] = {"model": "tiny-a", "messages": HI, "max_tokens": LONG}
    for n in (3, 4, 5):
        # A plain chat leaves a kept connection to llama-server, so the next request is written
        # to it at once, from the parser's callback.
        async with client(proxy_pair.lane.url, {"Authorization": f"Bearer {key}"}) as c:
            short = {"model": "tiny-a", "messages": HI, "max_tokens": n}
            r = await c.post("/v1/chat/completions", json=short)
            assert r.json()["choices"][0]["message"]["content"] == expected_text("A", n)
        before = proxy_pair.taken
        # The request and the hang-up are both in the port's socket before its event loop runs again
        # (this test runs on that loop, and a blocking socket does not give it a turn).
        with socket.create_connection(("127.0.0.1", proxy_pair.lane.port)) as sock:
            sock.sendall(request(key, long))
            sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + 10
        while not any(ex.status == 499 for ex in seen[-1:]):
            assert time.monotonic() < deadline, "the hang-up was not recorded"
            await asyncio.sleep(0.01)
        assert proxy_pair.taken == before + 1  # the lane took it
        await eventually_idle(services, m)
        assert services.router.slot(m).inflight == 0 and len(services.relay.inflight) == 0
