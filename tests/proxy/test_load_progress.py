"""Router mode's model event stream (``GET /models/sse``) while a real llama-server loads."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx

from llamaman.app import LlamaMan
from llamaman.proxy.app import create_proxy_app
from tests.helpers import StreamingASGITransport


async def test_a_load_streams_its_stages_with_rising_fractions_then_loaded(services: LlamaMan) -> None:
    transport = StreamingASGITransport(create_proxy_app(services))
    async with httpx.AsyncClient(transport=transport, base_url="http://llamaman.test", timeout=30) as c:
        async with c.stream("GET", "/models/sse") as events:
            assert events.headers["content-type"].startswith("text/event-stream")
            loading = asyncio.create_task(c.post("/models/load", json={"model": "tiny-a"}))
            seen: list[dict[str, Any]] = []
            async for line in events.aiter_lines():
                if line.startswith("data: "):
                    seen.append(json.loads(line[6:]))
                    if seen[-1]["data"]["status"] == "loaded":
                        break
            assert (await loading).status_code == 200
    assert {e["model"] for e in seen} == {"tiny-a"} and {e["event"] for e in seen} == {"status_change"}
    progress = [e["data"]["progress"] for e in seen if "progress" in e["data"]]
    assert progress, seen
    fractions = [p["fraction"] for p in progress]
    assert fractions == sorted(fractions) and 0 <= fractions[0] and fractions[-1] <= 0.95
    assert "reading model" in [p["stage"] for p in progress]
    assert seen[-1]["data"] == {"status": "loaded"}
