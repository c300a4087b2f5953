"""A stream on the fast lane is spliced: each read from llama-server is written to the client from
the upstream connection's own callback. A client that reads slowly holds llama-server's answer back
instead of having it piled up in LlamaMan, and still gets all of it, counted as llama-server counts it;
one that hangs up mid-stream ends the generation at once.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import httptools
import httpx
import pytest

from llamaman.app import LlamaMan
from llamaman.core.exchange import Exchange
from llamaman.proxy.fast_protocol import FastLaneProtocol
from llamaman.testing.tiny_gguf import expected_text
from llamaman.upstream.wire import UpstreamResponse
from tests.proxy.lane_ports import Ports, request

pytestmark = pytest.mark.llama

TOKENS = 1500


class _Stream:
    """A chunked SSE answer read off a socket: its status, its text and its usage."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.body = b""
        self.done = False

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.done = True

    def text_and_usage(self) -> tuple[str, dict[str, Any]]:
        text, usage = "", {}
        for line in self.body.split(b"\n"):
            if line.startswith(b"data: {"):
                event = json.loads(line[6:])
                usage = event.get("usage") or usage
                for choice in event.get("choices") or []:
                    text += (choice.get("delta") or {}).get("content") or ""
        return text, usage


async def test_a_client_that_reads_slowly_holds_llama_server_back_and_still_gets_every_token(
    services: LlamaMan, proxy_pair: Ports, monkeypatch: pytest.MonkeyPatch
) -> None:
    await services.router.load("tiny-a")
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
    made = FastLaneProtocol.connection_made

    def small_buffers(self: FastLaneProtocol, transport: Any) -> None:
        # A slow network: the kernel holds little of what LlamaMan writes to this client.
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        made(self, transport)

    monkeypatch.setattr(FastLaneProtocol, "connection_made", small_buffers)
    seen: list[Exchange] = []
    services.relay.add_observer(seen.append)

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window: LlamaMan's writes back up
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", proxy_pair.lane.port))
    reader, writer = await asyncio.open_connection(sock=sock)
    body = {"model": "tiny-a", "messages": [{"role": "user", "content": "hi"}], "max_tokens": TOKENS,
            "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip
    writer.write(request(key, body))
    for _ in range(4000):  # the client reads nothing until the lane had to wait for it
        if waits:
            break
        await asyncio.sleep(0.005)
    assert waits, "the lane never waited for the slow client"
    stream = _Stream()
    while not stream.done:
        data = await asyncio.wait_for(reader.read(4096), 60)
        assert data, "the connection closed before the answer ended"
        stream.parser.feed_data(data)
        await asyncio.sleep(0)  # slowly: a little at a time
    writer.close()
    assert proxy_pair.taken == 1  # the lane answered it
    text, usage = stream.text_and_usage()
    assert text == expected_text("A", TOKENS)
    assert usage["completion_tokens"] == TOKENS
    for _ in range(2000):
        if seen:
            break
        await asyncio.sleep(0.005)
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
    for _ in range(2000):
        if seen and services.router.slot(m).inflight == 0:
            break
        await asyncio.sleep(0.005)
    assert proxy_pair.taken == 1  # the lane answered it
    # The answer had begun: recorded with the status it was sent with, as proxies log a stream cut
    # short after its head; cut off before llama-server's final event (a generation left running
    # reaches it, with its usage, long before the checks below could tell).
    assert [(ex.status, ex.stream) for ex in seen] == [(200, True)]
    assert seen[0].completion_tokens == 0
    assert services.router.slot(m).inflight == 0 and len(services.relay.inflight) == 0
    async with httpx.AsyncClient(timeout=10, trust_env=False) as c:
        slots = (await c.get(f"{m.base_url}/slots", headers=m.proc.auth_headers)).json()
    assert not any(s["is_processing"] for s in slots), "llama-server kept generating for a gone client"
