"""Router mode's model event stream (``GET /models/sse``) while a real llama-server loads."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import openai

from llamaman.app import LlamaMan
from llamaman.instances.load_progress import STAGES
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


async def test_a_client_that_opts_in_reads_the_load_stages_in_its_stream(oai: openai.AsyncOpenAI) -> None:
    stream = await oai.chat.completions.create(
        model="tiny-a", messages=[{"role": "user", "content": "hi"}], max_tokens=6, stream=True,
        extra_headers={"X-LlamaMan-Loading-Progress": "1"},
    )  # fmt: skip
    reasoning, content = "", ""
    async for chunk in stream:
        if chunk.choices:
            delta: Any = chunk.choices[0].delta
            reasoning += getattr(delta, "reasoning_content", None) or ""
            content += delta.content or ""
    lines = [line for line in reasoning.splitlines() if line]
    assert lines[0] == "loading tiny-a…" and "loaded in" in lines[-1]
    # One note per stage reached while it loads (this build writes its log in one piece at the end of
    # a tiny model's load, so the first stage may be the only one seen before it answers).
    notes = [line.rsplit(" ", 1) for line in lines[1:-1] if line != "."]
    assert notes, reasoning
    assert {stage for stage, _ in notes} <= {name for _, name, _ in STAGES} | {"starting process"}
    percents = [int(p.removesuffix("%")) for _, p in notes]
    assert percents == sorted(percents) and percents[-1] <= 95
    assert content.startswith("abcdef")
