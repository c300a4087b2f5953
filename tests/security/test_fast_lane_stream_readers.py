"""A caller who asks for a long stream on the fast lane and never reads it must not make LlamaMan hold
the stream for it. The lane writes each block to the client from llama-server's connection callback;
the guard: once the client's side is backed up, LlamaMan stops reading from llama-server until it
drains, so the answer waits in llama-server and the kernel, not in LlamaMan's memory. Without it,
every such caller would have a whole generation buffered in the proxy. When the caller does read,
it still gets every token."""

from __future__ import annotations

import pytest

from llamaman.app import LlamaMan
from llamaman.core.exchange import Exchange
from llamaman.testing.tiny_gguf import expected_text
from llamaman.upstream.wire import Connection
from tests.proxy.lane_ports import (
    Ports,
    StreamAnswer,
    generating,
    idle,
    narrow_connection,
    request,
    settled,
    small_send_buffers,
)

pytestmark = [pytest.mark.auth, pytest.mark.llama]

TOKENS = 4000  # ~1.2 MB of events, within the tiny model's context
# What LlamaMan may hold for the caller: under its transport's high water (64 KiB), one more block,
# which is one read of llama-server's socket (uvloop reads up to 256 KB at a time), and the head.
HELD = 384 * 1024


# Both streaming endpoints of the lane: each is spliced. The tiny model goes on from the letter after
# the last it was given, so the prompt ends in "z" for the completion's text to start at "a".
ASKS = {
    "/v1/chat/completions": {"messages": [{"role": "user", "content": "hi"}]},
    "/v1/completions": {"prompt": "xyz"},
}


def upstream_pauses(monkeypatch: pytest.MonkeyPatch) -> list[Connection]:
    """The connections to llama-server that LlamaMan stops reading, as it stops reading them."""
    pause = Connection.pause
    paused: list[Connection] = []

    def recorded(self: Connection) -> None:
        pause(self)
        if self.paused and self not in paused:
            paused.append(self)

    monkeypatch.setattr(Connection, "pause", recorded)
    return paused


@pytest.mark.timeout(300)
@pytest.mark.parametrize("path", list(ASKS))
async def test_a_caller_who_never_reads_a_long_stream_cannot_make_the_lane_hold_it(
    services: LlamaMan, proxy_pair: Ports, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    m = await services.router.load("tiny-a")
    _, key = await services.auth.keys.create("never reads")
    lanes = small_send_buffers(monkeypatch)
    seen: list[Exchange] = []
    services.relay.add_observer(seen.append)
    paused = upstream_pauses(monkeypatch)

    reader, writer = await narrow_connection(proxy_pair.lane.port)
    body = {"model": "tiny-a", **ASKS[path], "max_tokens": TOKENS, "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    writer.write(request(key, body, path))

    assert await settled(lambda: generating(services, m), 60), "the generation did not start"
    # The guard is LlamaMan's own event: it stops reading from llama-server once the caller is backed
    # up. Without it, LlamaMan would read on and never pause.
    assert await settled(lambda: bool(paused), 240), "LlamaMan never stopped reading from llama-server"
    # llama-server goes on generating while the kernel's buffers take its writes (all 4,000 tokens in
    # 5-20 s on an idle machine); on a loaded one they fill first and it waits to send. Either way,
    # LlamaMan must not take up reading again for a caller who still reads nothing.
    await settled(lambda: idle(services, m), 30)
    assert all(c.paused for c in paused), "LlamaMan read from llama-server again for a silent caller"
    held = max(p.transport.get_write_buffer_size() for p in lanes)
    assert held <= HELD, f"LlamaMan holds {held} bytes for a caller who reads nothing"
    assert not seen, "the stream ended while its caller read nothing"

    stream = StreamAnswer()
    await stream.read(reader)
    writer.close()
    text, usage = stream.text_and_usage()
    assert text == expected_text("A", TOKENS) and usage["completion_tokens"] == TOKENS
