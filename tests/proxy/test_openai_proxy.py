"""The OpenAI surface through a real listening proxy, driven by the official ``openai`` client."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import openai
import pytest

from llamaman.app import LlamaMan
from llamaman.core.config import Settings
from llamaman.core.state import InstanceState
from llamaman.instances.launch import LaunchSettings, SamplingOverrides
from llamaman.proxy.app import ProxyServer, create_proxy_app
from llamaman.proxy.openai import encode_body
from llamaman.testing.tiny_gguf import write_tiny_model
from tests.helpers import admin_headers

S = InstanceState
HI = [{"role": "user", "content": "hi"}]


def proxy_instances(services: Any, model_path: str) -> list[Any]:
    return [m for m in services.supervisor.list() if m.record.model_path == model_path]


async def test_models_list_shows_every_model_with_its_status(services: Any, oai: openai.AsyncOpenAI) -> None:
    page = await oai.models.list()
    by_id = {m.id: m for m in page.data}
    assert {"tiny-a", "tiny-b", "tiny-embed"} <= set(by_id)
    a = by_id["tiny-a"].model_dump()
    assert a["object"] == "model" and a["owned_by"] == "llamaman"
    assert a["status"] == {"value": "unloaded"}
    assert a["meta"]["size"] > 0 and "completion" in a["meta"]["capabilities"]
    assert a["meta"]["n_ctx_train"]
    assert by_id["tiny-embed"].model_dump()["meta"]["capabilities"] == ["embedding"]

    await services.router.load("tiny-a")
    statuses = {m.id: m.model_dump()["status"]["value"] for m in (await oai.models.list()).data}
    assert statuses["tiny-a"] == "loaded" and statuses["tiny-b"] == "unloaded"
    one = await oai.models.retrieve("tiny-a")
    assert one.id == "tiny-a"


async def test_aliases_are_listed_and_routed(services: Any, oai: openai.AsyncOpenAI) -> None:
    await services.aliases.put("my-chat", "tiny-b")
    ids = {m.id for m in (await oai.models.list()).data}
    assert "my-chat" in ids
    reply = await oai.chat.completions.create(model="my-chat", messages=HI, max_tokens=6)
    assert (reply.choices[0].message.content or "").startswith("zyxw")


async def test_chat_completion_auto_starts_the_model(services: Any, oai: openai.AsyncOpenAI) -> None:
    assert services.supervisor.list() == []
    reply = await oai.chat.completions.create(model="tiny-a", messages=HI, max_tokens=8)
    assert (reply.choices[0].message.content or "").startswith("abcdef")
    assert reply.usage is not None and reply.usage.completion_tokens > 0
    started = proxy_instances(services, "tiny-a.gguf")
    assert len(started) == 1
    assert started[0].record.origin == "proxy" and started[0].state == S.HEALTHY


async def test_streamed_chat_completion(oai: openai.AsyncOpenAI) -> None:
    stream = await oai.chat.completions.create(model="tiny-a", messages=HI, max_tokens=8, stream=True)
    text, finish = "", None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
    assert text.startswith("abcdef")
    assert finish == "length"


async def test_completions(oai: openai.AsyncOpenAI) -> None:
    reply = await oai.completions.create(model="tiny-b", prompt="hello z", max_tokens=5)
    assert reply.choices[0].text.startswith("yxwv")


async def test_embeddings(oai: openai.AsyncOpenAI) -> None:
    reply = await oai.embeddings.create(model="tiny-embed", input=["hello", "world"])
    assert len(reply.data) == 2
    assert len(reply.data[0].embedding) == 64


async def test_unknown_model_is_an_openai_not_found(services: Any, oai: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        await oai.chat.completions.create(model="no-such-model", messages=HI)
    assert "no-such-model" in str(err.value)
    body: Any = err.value.body
    assert body["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        await oai.models.retrieve("no-such-model")
    assert services.supervisor.list() == []


async def test_missing_model_and_bad_json_are_400(http: httpx.AsyncClient) -> None:
    r = await http.post("/v1/chat/completions", json={"messages": HI})
    assert r.status_code == 400 and "model" in r.json()["error"]["message"]
    assert r.json()["error"]["type"] == "invalid_request_error"
    r = await http.post(
        "/v1/chat/completions", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert r.status_code == 400


async def test_other_v1_routes_pass_through(http: httpx.AsyncClient) -> None:
    r = await http.post("/v1/chat/completions/input_tokens", json={"model": "tiny-a", "messages": HI})
    assert r.status_code == 200 and r.json()["input_tokens"] > 0
    r = await http.post("/v1/responses", json={"model": "tiny-a", "input": "hi", "max_output_tokens": 8})
    assert r.status_code == 200, r.text
    assert "abcdef" in r.text
    # The tiny models are no rerankers: llama-server's own refusal proves the request got there.
    r = await http.post("/v1/rerank", json={"model": "tiny-a", "query": "a", "documents": ["b"]})
    assert r.status_code == 400 and "rerank" in r.json()["error"]["message"]
    r = await http.post("/v1/anything", json={"messages": HI})
    assert r.status_code == 400


async def test_loading_progress_on_a_cold_start(
    services: Any, proxy: ProxyServer, auth_headers: dict[str, str]
) -> None:
    body = {"model": "tiny-b", "messages": HI, "max_tokens": 6, "stream": True}
    events: list[dict[str, Any]] = []
    async with (
        httpx.AsyncClient(timeout=60, trust_env=False, headers=auth_headers) as c,
        c.stream(
            "POST",
            f"{proxy.url}/v1/chat/completions",
            json=body,
            headers={"X-LlamaMan-Loading-Progress": "1"},
        ) as r,
    ):
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        done = False
        async for line in r.aiter_lines():
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data: "):
                events.append(json.loads(line[6:]))
    assert done
    deltas = [e["choices"][0]["delta"] for e in events if e.get("choices")]
    reasoning = "".join(d.get("reasoning_content") or "" for d in deltas)
    content = "".join(d.get("content") or "" for d in deltas)
    assert reasoning.startswith("loading tiny-b") and "loaded in" in reasoning
    assert content.startswith("zyxw")


async def test_loading_progress_through_the_openai_client(oai: openai.AsyncOpenAI) -> None:
    stream = await oai.chat.completions.create(
        model="tiny-a", messages=HI, max_tokens=6, stream=True,
        extra_body={"llamaman_loading_progress": True},
    )  # fmt: skip
    reasoning, content = "", ""
    async for chunk in stream:
        if chunk.choices:
            delta: Any = chunk.choices[0].delta
            reasoning += getattr(delta, "reasoning_content", None) or ""
            content += delta.content or ""
    assert reasoning.startswith("loading tiny-a")
    assert content.startswith("abcdef")


async def test_no_loading_progress_once_loaded(services: Any, oai: openai.AsyncOpenAI) -> None:
    await services.router.load("tiny-a")
    stream = await oai.chat.completions.create(
        model="tiny-a", messages=HI, max_tokens=6, stream=True,
        extra_headers={"X-LlamaMan-Loading-Progress": "1"},
    )  # fmt: skip
    reasoning = ""
    async for chunk in stream:
        if chunk.choices:
            reasoning += getattr(chunk.choices[0].delta, "reasoning_content", None) or ""
    assert "loading" not in reasoning


async def test_loading_progress_for_an_unknown_model_is_still_a_404(oai: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        await oai.chat.completions.create(
            model="nope", messages=HI, stream=True, extra_headers={"X-LlamaMan-Loading-Progress": "1"}
        )


async def test_forced_sampling_reaches_llama_server(services: Any, http: httpx.AsyncClient) -> None:
    ls = LaunchSettings(
        model_path="tiny-a.gguf", ctx_size=512, sampling=SamplingOverrides(temperature=0, top_k=7)
    )
    m = await services.supervisor.launch(ls)
    assert await m.proc.wait_for({S.HEALTHY, S.FAILED}, timeout=30) == S.HEALTHY
    r = await http.post(
        "/v1/chat/completions",
        json={"model": "tiny-a", "messages": HI, "max_tokens": 4, "temperature": 1.5, "top_k": 50},
    )
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"].startswith("abcd")
    slots = (await http.get("/slots", params={"model": "tiny-a"})).json()
    params = slots[0]["params"]
    assert params["temperature"] == 0 and params["top_k"] == 7


def test_encode_body_passes_unchanged_bytes_through() -> None:
    def lease(sampling: SamplingOverrides) -> Any:
        settings = LaunchSettings(model_path="tiny-b.gguf", sampling=sampling)
        return SimpleNamespace(instance=SimpleNamespace(settings=settings))

    raw = b'{"model": "tiny-b",   "temperature": 0.5}'
    assert encode_body(json.loads(raw), raw, lease(SamplingOverrides()), sampling=True, changed=False) is raw
    same = lease(SamplingOverrides(temperature=0.5))
    assert encode_body(json.loads(raw), raw, same, sampling=True, changed=False) is raw
    forced = lease(SamplingOverrides(temperature=0.1, top_k=3))
    assert encode_body(json.loads(raw), raw, forced, sampling=False, changed=False) is raw
    out = json.loads(encode_body(json.loads(raw), raw, forced, sampling=True, changed=False))
    assert out == {"model": "tiny-b", "temperature": 0.1, "top_k": 3}
    stripped = encode_body({"model": "tiny-b"}, raw, same, sampling=True, changed=True)
    assert json.loads(stripped) == {"model": "tiny-b", "temperature": 0.5}


async def test_busy_instance_answers_429_with_retry_after(services: Any, oai: openai.AsyncOpenAI) -> None:
    ls = LaunchSettings(model_path="tiny-a.gguf", ctx_size=512, max_concurrent=1, max_queue_depth=0)
    m = await services.supervisor.launch(ls)
    assert await m.proc.wait_for({S.HEALTHY, S.FAILED}, timeout=30) == S.HEALTHY
    held = await services.router.acquire("tiny-a")  # the one slot is taken
    try:
        with pytest.raises(openai.RateLimitError) as err:
            await oai.chat.completions.create(model="tiny-a", messages=HI, max_tokens=4)
        assert int(err.value.response.headers["retry-after"]) >= 1
    finally:
        held.release()
    reply = await oai.chat.completions.create(model="tiny-a", messages=HI, max_tokens=4)
    assert (reply.choices[0].message.content or "").startswith("abcd")


async def test_client_leaving_during_a_cold_start_leaks_no_lease(
    services: Any, proxy: ProxyServer, auth_headers: dict[str, str]
) -> None:
    body = {"model": "tiny-a", "messages": HI, "max_tokens": 100000, "stream": True}
    headers = {"X-LlamaMan-Loading-Progress": "1"}
    async with (
        httpx.AsyncClient(timeout=60, trust_env=False, headers=auth_headers) as c,
        c.stream("POST", f"{proxy.url}/v1/chat/completions", json=body, headers=headers) as r,
    ):
        async for line in r.aiter_lines():
            assert "loading tiny-a" in line
            break
    await services.router.load("tiny-a")  # wait for the load the request started
    for _ in range(100):
        if all(services.router.slot(m).inflight == 0 for m in services.supervisor.list()):
            break
        await asyncio.sleep(0.05)
    assert [services.router.slot(m).inflight for m in services.supervisor.list()] == [0]


async def test_a_model_that_fails_to_load_is_a_503(
    make_settings: Callable[..., Settings], fake_server_bin: Callable[..., str]
) -> None:
    services = LlamaMan(make_settings(LLAMA_SERVER_BIN=fake_server_bin("exit-during-load")))
    await services.start()
    server = ProxyServer(create_proxy_app(services), "127.0.0.1", 0)
    await server.start()
    key = (await admin_headers(services))["Authorization"].removeprefix("Bearer ")
    try:
        async with openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0) as client:
            with pytest.raises(openai.InternalServerError) as err:
                await client.chat.completions.create(model="tiny-a", messages=HI, max_tokens=4)
            assert err.value.status_code == 503 and "tiny-a" in str(err.value)
            # With loading progress on, the failure arrives as an error event on the open stream.
            stream = await client.chat.completions.create(
                model="tiny-b", messages=HI, stream=True, extra_body={"llamaman_loading_progress": True}
            )
            with pytest.raises(openai.APIError, match="tiny-b"):
                async for _ in stream:
                    pass
    finally:
        await server.stop()
        await services.stop()


async def test_same_stem_in_two_folders_gets_two_ids(
    services: Any, models_dir: Path, oai: openai.AsyncOpenAI
) -> None:
    write_tiny_model(models_dir / "other" / "tiny-a.gguf", "B")
    ids = [m.id for m in (await oai.models.list()).data]
    assert ids.count("tiny-a") == 1 and "other/tiny-a" in ids
    reply = await oai.chat.completions.create(model="other/tiny-a", messages=HI, max_tokens=4)
    assert (reply.choices[0].message.content or "").startswith("zyxw")
