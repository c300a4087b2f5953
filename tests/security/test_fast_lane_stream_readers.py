"""A caller who asks for a long stream on the fast lane and never reads it must not make LlamaMan hold
the stream for it. The lane writes each block to the client from llama-server's connection callback;
the guard: once the client's side is backed up, LlamaMan stops reading from llama-server until it
drains, so the answer waits in llama-server and the kernel, not in LlamaMan's memory. Without it,
every such caller would have a whole generation buffered in the proxy. When the caller does read,
it still gets every token."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from llamaman.app import LlamaMan
from llamaman.core.exchange import Exchange
from llamaman.testing.tiny_gguf import expected_text
from tests.proxy.lane_ports import Ports, StreamAnswer, narrow_connection, request, small_send_buffers

pytestmark = [pytest.mark.auth, pytest.mark.llama]

TOKENS = 4000  # ~1.2 MB of events, within the tiny model's context
# What LlamaMan may hold for the caller: under its transport's high water (64 KiB), one more block,
# which is one read of llama-server's socket (uvloop reads up to 256 KB at a time), and the head.
HELD = 384 * 1024


async def _until(check: Any, what: str, timeout: float = 60) -> None:
    for _ in range(int(timeout / 0.01)):
        if await check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{what}: not reached")


async def test_a_caller_who_never_reads_a_long_stream_cannot_make_the_lane_hold_it(
    services: LlamaMan, proxy_pair: Ports, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = await services.router.load("tiny-a")
    _, key = await services.auth.keys.create("never reads")
    lanes = small_send_buffers(monkeypatch)
    seen: list[Exchange] = []
    services.relay.add_observer(seen.append)

    reader, writer = await narrow_connection(proxy_pair.lane.port)
    body = {"model": "tiny-a", "messages": [{"role": "user", "content": "hi"}], "max_tokens": TOKENS,
            "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip
    writer.write(request(key, body))

    async def slot_busy() -> bool:
        slots = (await services.http.get(f"{m.base_url}/slots", headers=m.proc.auth_headers)).json()
        return any(s.get("is_processing") for s in slots)

    async def generated() -> bool:  # llama-server generates on whether or not its answer is read
        return not await slot_busy()

    await _until(slot_busy, "the generation started")
    await _until(generated, "the generation done")
    held = max(p.transport.get_write_buffer_size() for p in lanes)
    assert held <= HELD, f"LlamaMan holds {held} bytes for a caller who reads nothing"
    assert not seen, "the stream ended while its caller read nothing"

    stream = StreamAnswer()
    await stream.read(reader)
    writer.close()
    text, usage = stream.text_and_usage()
    assert text == expected_text("A", TOKENS) and usage["completion_tokens"] == TOKENS
