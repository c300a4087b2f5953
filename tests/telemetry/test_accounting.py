"""What a request costs is told alike everywhere: the activity row, the /metrics token counters and
the key's usage equal the counts llama-server itself reports, streamed or not, on the OpenAI and the
Ollama surface (whose streams are relayed without parsing every event)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from llamaman.app import LlamaMan
from llamaman.proxy.app import ProxyServer
from llamaman.testing.tiny_gguf import expected_text
from llamaman.upstream.pacing import PACER
from llamaman.upstream.wire import UpstreamResponse

pytestmark = pytest.mark.llama

HI = [{"role": "user", "content": "hi"}]


async def _openai(http: httpx.AsyncClient, n: int, *, stream: bool) -> tuple[int, int, str]:
    body: dict[str, Any] = {"model": "tiny-a", "messages": HI, "max_tokens": n, "stream": stream}
    if not stream:
        r = await http.post("/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
        usage = r.json()["usage"]
        return (
            usage["prompt_tokens"],
            usage["completion_tokens"],
            r.json()["choices"][0]["message"]["content"],
        )
    body["stream_options"] = {"include_usage": True}
    text, usage = "", None
    async with http.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if not line.startswith("data: {"):
                continue
            event = json.loads(line.removeprefix("data: "))
            usage = event.get("usage") or usage
            for choice in event.get("choices") or []:
                text += (choice.get("delta") or {}).get("content") or ""
    assert usage is not None
    return usage["prompt_tokens"], usage["completion_tokens"], text


async def _ollama(http: httpx.AsyncClient, n: int, *, stream: bool) -> tuple[int, int, str]:
    body = {"model": "tiny-a", "messages": HI, "stream": stream, "options": {"num_predict": n}}
    if not stream:
        r = await http.post("/api/chat", json=body)
        assert r.status_code == 200, r.text
        reply = r.json()
        return reply["prompt_eval_count"], reply["eval_count"], reply["message"]["content"]
    text, last = "", None
    async with http.stream("POST", "/api/chat", json=body) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
        async for line in r.aiter_lines():
            if line:
                last = json.loads(line)
                text += last["message"]["content"]
    assert last is not None and last["done"] is True
    return last["prompt_eval_count"], last["eval_count"], text


async def test_rows_metrics_and_key_usage_equal_llama_servers_counts_on_both_dialects(
    services: LlamaMan, proxy: ProxyServer, api: httpx.AsyncClient
) -> None:
    record, key = await services.auth.keys.create("counted")
    headers = {"Authorization": f"Bearer {key}"}
    told: dict[str, tuple[int, int]] = {}
    async with httpx.AsyncClient(base_url=proxy.url, timeout=60, trust_env=False, headers=headers) as http:
        for name, call, n in (
            ("openai", _openai, 5),
            ("openai_stream", _openai, 7),
            ("ollama", _ollama, 6),
            ("ollama_stream", _ollama, 9),
        ):
            prompt, completion, text = await call(http, n, stream=name.endswith("_stream"))
            # The tiny model answers the alphabet, one letter a token: the text is whole.
            assert text == "abcdefghijklmnopqrstuvwxyz"[:n] and completion == n, (name, text)
            told[name] = (prompt, completion)
    # Ollama counts only the prompt tokens evaluated afresh (cache hits left out), llama-server's usage
    # all of them: the same messages make the same prompt, so the OpenAI figure is the whole one.
    whole = told["openai"][0]
    assert told["openai_stream"][0] == whole and 0 < told["ollama_stream"][0] <= whole
    told = {name: (whole, completion) for name, (_, completion) in told.items()}

    await services.telemetry.activity.flush()
    rows = (await api.get("/api/activity")).json()["items"]
    logged = [(r["endpoint"], r["prompt_tokens"], r["completion_tokens"], r["key_name"]) for r in rows]
    assert logged[::-1] == [
        ("/v1/chat/completions", *told["openai"], "counted"),
        ("/v1/chat/completions", *told["openai_stream"], "counted"),
        ("/api/chat", *told["ollama"], "counted"),
        ("/api/chat", *told["ollama_stream"], "counted"),
    ]
    assert all(r["status"] == 200 and r["ttft_ms"] is not None for r in rows)

    fams = {f.name: f.samples for f in text_string_to_metric_families((await api.get("/metrics")).text)}

    def total(family: str) -> float:
        return sum(
            s.value for s in fams[family] if s.name == f"{family}_total" and s.labels["model"] == "tiny-a"
        )

    prompt = sum(p for p, _ in told.values())
    completion = sum(c for _, c in told.values())
    assert total("llamaman_prompt_tokens") == prompt
    assert total("llamaman_completion_tokens") == completion
    assert services.auth.keys.tokens_today(record.id) == prompt + completion


async def test_a_request_that_waited_for_its_model_to_load_is_marked_as_a_cold_start(
    services: LlamaMan, proxy: ProxyServer, api: httpx.AsyncClient
) -> None:
    await services.router.unload("tiny-a")
    _, key = await services.auth.keys.create("cold")
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=proxy.url, timeout=60, trust_env=False, headers=headers) as http:
        await _openai(http, 2, stream=False)  # loads the model
        await _ollama(http, 2, stream=True)  # finds it loaded
    await services.telemetry.activity.flush()
    rows = (await api.get("/api/activity", params={"key_name": "cold"})).json()["items"]
    waited = {r["endpoint"]: r["load_ms"] for r in rows}
    assert waited["/v1/chat/completions"] is not None and waited["/v1/chat/completions"] > 0
    assert waited["/api/chat"] is None


async def test_streams_kept_to_the_pacing_beat_lose_no_token_and_are_counted_alike(
    services: LlamaMan, proxy: ProxyServer, api: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every stream paced, on a beat long enough that a block may carry many tokens. Whether a
    # block is held depends on how fast this machine runs llama-server; that holding gathers
    # tokens is shown in tests/upstream/test_pacing.py, with a server whose pace the test sets.
    monkeypatch.setattr(PACER, "min_streams", 1)
    monkeypatch.setattr(PACER, "interval", 0.05)
    relayed: list[bool] = []
    aiter_raw = UpstreamResponse.aiter_raw

    def recording(self: UpstreamResponse, paced: bool = False) -> AsyncIterator[bytes]:
        relayed.append(paced)  # with min_streams 1, a paced stream is kept to the beat
        return aiter_raw(self, paced)

    monkeypatch.setattr(UpstreamResponse, "aiter_raw", recording)
    _, key = await services.auth.keys.create("paced")
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=proxy.url, timeout=60, trust_env=False, headers=headers) as http:
        told = await asyncio.gather(
            *(_openai(http, 300 + i, stream=True) for i in range(3)),
            *(_ollama(http, 300 + i, stream=True) for i in range(3)),
        )
    assert relayed == [True] * 6  # every answer went through the relay kept to the beat
    for i, (_prompt, completion, text) in enumerate(told):
        assert text == expected_text("A", 300 + i % 3) and completion == 300 + i % 3
    await services.telemetry.activity.flush()
    rows = (await api.get("/api/activity", params={"key_name": "paced"})).json()["items"]
    assert sorted(r["completion_tokens"] for r in rows) == sorted(c for _, c, _ in told)
    assert all(r["status"] == 200 for r in rows)
