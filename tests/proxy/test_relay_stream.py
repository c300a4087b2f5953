"""The pass-through stream: bytes relayed untouched, its events counted as they pass, and the token
counts taken from llama-server's final event without parsing the chunks before it."""

from __future__ import annotations

import httpx
import pytest

from llamaman.app import LlamaMan
from llamaman.core.exchange import Exchange
from llamaman.proxy.app import ProxyServer
from tests.helpers import admin_headers

pytestmark = pytest.mark.llama


@pytest.mark.parametrize("with_usage", [True, False], ids=["usage", "timings-only"])
async def test_a_stream_counts_its_events_and_reads_usage_from_the_final_one(
    services: LlamaMan, proxy: ProxyServer, with_usage: bool
) -> None:
    seen: list[Exchange] = []
    services.relay.add_observer(seen.append)
    body: dict[str, object] = {
        "model": "tiny-a",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 12,
        "stream": True,
    }
    if with_usage:
        body["stream_options"] = {"include_usage": True}
    headers = await admin_headers(services)
    async with (
        httpx.AsyncClient(base_url=proxy.url, timeout=60, trust_env=False, headers=headers) as http,
        http.stream("POST", "/v1/chat/completions", json=body) as r,
    ):
        assert r.status_code == 200
        raw = b"".join([chunk async for chunk in r.aiter_raw()])
    events = raw.count(b"data: ")
    assert raw.rstrip().endswith(b"data: [DONE]") and events > 12

    [ex] = [e for e in seen if e.endpoint == "/v1/chat/completions"]
    assert ex.stream and ex.status == 200 and ex.error is None
    assert ex.progress_tokens == events  # every event the client got, [DONE] included
    # Usage when asked for, else llama-server's timings: the same counts either way.
    assert ex.completion_tokens == 12 and ex.prompt_tokens > 0
