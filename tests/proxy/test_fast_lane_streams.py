"""A stream on the fast lane is spliced: each read from llama-server is written to the client from
the upstream connection's own callback. A client that reads slowly holds llama-server's answer back
instead of having it piled up in LlamaMan, and still gets all of it, counted as llama-server counts it;
one that hangs up mid-stream ends the generation at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from llamaman.app import LlamaMan
from llamaman.core.exchange import Exchange
from llamaman.testing.tiny_gguf import expected_text
from llamaman.upstream.wire import UpstreamResponse
from tests.proxy.lane_ports import (
    Ports,
    StreamAnswer,
    idle,
    narrow_connection,
    request,
    settled,
    small_send_buffers,
    whereabouts,
)

pytestmark = pytest.mark.llama

TOKENS = 1500


async def test_a_client_that_reads_slowly_holds_llama_server_back_and_still_gets_every_token(
    services: LlamaMan, proxy_pair: Ports, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = await services.router.load("tiny-a")
    _, key = await services.auth.keys.create("slow reader")
    waits: list[int] = []  # each time the lane waited for its client's side to drain
    splice = UpstreamResponse.splice

    async def counting(
        self: UpstreamResponse, sink: Callable[[bytes], bool], drained: Callable[[], Awaitable[object]]
    ) -> None:
        async def counted() -> object:
            waits.append(1)
            return await drained()

        await splice(self, sink, counted)

    monkeypatch.setattr(UpstreamResponse, "splice", counting)
    small_send_buffers(monkeypatch)
    seen: list[Exchange] = []
    services.relay.add_observer(seen.append)

    reader, writer = await narrow_connection(proxy_pair.lane.port)  # LlamaMan's writes back up
    body = {"model": "tiny-a", "messages": [{"role": "user", "content": "hi"}], "max_tokens": TOKENS,
            "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip
    writer.write(request(key, body))
    # The client reads nothing until the lane waits for it (or the stream ends).
    moved = await settled(lambda: bool(waits or seen), 120)
    ended = [(e.status, e.error, e.completion_tokens) for e in seen]
    if not waits:
        where = await whereabouts(services, m)
        raise AssertionError(
            f"the lane never waited for the slow client (moved within 120 s: {moved}; ended: {ended}; "
            f"taken by the lane: {proxy_pair.taken}; {where})"
        )
    stream = StreamAnswer()
    await stream.read(reader)  # slowly: a little at a time
    writer.close()
    assert proxy_pair.taken == 1  # the lane answered it
    text, usage = stream.text_and_usage()
    assert text == expected_text("A", TOKENS)
    assert usage["completion_tokens"] == TOKENS
    await settled(lambda: bool(seen))
    assert seen[0].status == 200 and seen[0].completion_tokens == TOKENS


async def test_a_client_that_hangs_up_mid_stream_ends_the_generation_and_gives_its_place_back(
    services: LlamaMan, proxy_pair: Ports
) -> None:
    m = await services.router.load("tiny-a")
    _, key = await services.auth.keys.create("leaving")
    seen: list[Exchange] = []
    services.relay.add_observer(seen.append)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy_pair.lane.port)
    body = {
        "model": "tiny-a",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 100000,
        "stream": True,
    }
    writer.write(request(key, body))
    got = b""
    while b"data: {" not in got:  # the first token: hang up
        data = await asyncio.wait_for(reader.read(4096), 60)
        assert data, "the connection closed before the first token"
        got += data
    writer.close()
    await writer.wait_closed()
    await settled(lambda: bool(seen) and services.router.slot(m).inflight == 0)
    assert proxy_pair.taken == 1  # the lane answered it
    # The answer had begun: recorded with the status it was sent with, as proxies log a stream cut
    # short after its head; cut off before llama-server's final event (a generation left running
    # reaches it, with its usage, long before the checks below could tell).
    assert [(ex.status, ex.stream) for ex in seen] == [(200, True)]
    assert seen[0].completion_tokens == 0
    assert services.router.slot(m).inflight == 0 and len(services.relay.inflight) == 0
    # llama-server notices a stream's closed connection at its next write.
    assert await settled(lambda: idle(services, m), 30), "llama-server kept generating for a gone client"
