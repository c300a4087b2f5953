"""The Ollama surface end to end: the official ``ollama`` client against real llama-servers."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import ollama
import pytest
from fastapi import FastAPI

from llamaman.app import LlamaMan
from llamaman.core.state import InstanceState
from llamaman.instances.supervisor import ManagedInstance
from llamaman.proxy import ollama as ollama_proxy
from llamaman.proxy.app import ProxyServer
from tests.conftest import TRAINED_CTX

S = InstanceState
SHORT = {"num_predict": 12}
HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture
async def base_url(services: LlamaMan) -> AsyncIterator[str]:
    """The Ollama routers alone on a real port (no other surface, no auth layer), so the client
    streams over a socket as it would in use."""
    app = FastAPI()
    app.state.services = services
    app.include_router(ollama_proxy.router)
    app.include_router(ollama_proxy.root_router)
    server = ProxyServer(app, "127.0.0.1", 0)
    await server.start()
    try:
        yield server.url
    finally:
        await server.stop()


@pytest.fixture
async def client(base_url: str) -> AsyncIterator[ollama.AsyncClient]:
    c = ollama.AsyncClient(host=base_url, trust_env=False)
    try:
        yield c
    finally:
        await c.close()


def instances_of(services: LlamaMan, rel_path: str) -> list[ManagedInstance]:
    return [m for m in services.supervisor.list() if m.record.model_path == rel_path]


def healthy(services: LlamaMan, rel_path: str) -> list[ManagedInstance]:
    return [m for m in instances_of(services, rel_path) if m.state == S.HEALTHY]


async def wait_until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_root_version_and_unsupported_endpoints(base_url: str) -> None:
    async with httpx.AsyncClient(base_url=base_url, trust_env=False) as http:
        root = await http.get("/")
        assert root.status_code == 200 and root.text == "Ollama is running"
        assert (await http.head("/")).status_code == 200
        version = (await http.get("/api/version")).json()["version"]
        assert tuple(int(p) for p in version.split(".")) >= (0, 12, 0)
        for path in ("/api/create", "/api/push"):
            r = await http.post(path, json={"model": "x"})
            assert r.status_code == 400 and "not supported by LlamaMan" in r.json()["error"]


async def test_list_show_and_unknown_models(client: ollama.AsyncClient) -> None:
    listed = {m.model: m for m in (await client.list()).models}
    assert {"tiny-a:latest", "tiny-b:latest", "tiny-embed:latest"} <= set(listed)
    a = listed["tiny-a:latest"]
    assert a.size and a.size > 0 and a.modified_at is not None
    assert a.digest and len(a.digest) == 64
    assert a.details and a.details.format == "gguf" and a.details.family == "llama"
    assert a.details.parameter_size and a.details.quantization_level == "F32"
    again = {m.model: m.digest for m in (await client.list()).models}
    assert again["tiny-a:latest"] == a.digest != again["tiny-b:latest"]

    shown = await client.show("tiny-a")
    assert shown.modelinfo is not None and shown.modelinfo["llama.context_length"] == TRAINED_CTX
    assert shown.capabilities == ["completion"]
    assert shown.template and "im_start" in shown.template
    assert shown.details and shown.details.family == "llama"
    assert (await client.show("tiny-embed:latest")).capabilities == ["embedding"]

    for call in (
        client.show("nope"),
        client.chat("nope", messages=HELLO),
        client.generate("nope", prompt="x"),
        client.embed("nope", input="x"),
    ):
        with pytest.raises(ollama.ResponseError) as err:
            await call
        assert err.value.status_code == 404 and "nope" in err.value.error
    with pytest.raises(ollama.ResponseError) as err:
        await client.chat("tiny-embed", messages=HELLO)
    assert err.value.status_code == 400


async def test_chat_plain_streamed_and_ps(services: LlamaMan, client: ollama.AsyncClient) -> None:
    parts = [part async for part in await client.chat("tiny-a", messages=HELLO, stream=True, options=SHORT)]
    assert "".join(p.message.content or "" for p in parts).startswith("abcdef")
    assert all(not p.done for p in parts[:-1])
    last = parts[-1]
    assert last.done and last.done_reason == "length" and last.eval_count == SHORT["num_predict"]
    assert last.total_duration and last.eval_duration and last.prompt_eval_duration
    assert last.prompt_eval_count and last.load_duration and last.load_duration > 0

    reply = await client.chat("tiny-a:latest", messages=HELLO, options=SHORT)
    assert reply.message.content and reply.message.content.startswith("abcdef")
    assert reply.done and reply.eval_count == SHORT["num_predict"] and reply.total_duration
    assert reply.load_duration == 0  # already running

    loaded = {m.model: m for m in (await client.ps()).models}
    assert set(loaded) == {"tiny-a:latest"}
    ps = loaded["tiny-a:latest"]
    assert ps.context_length == 4096
    assert ps.size and ps.size > 0
    assert ps.size_vram == 0 if not services.telemetry.gpu.available else (ps.size_vram or 0) > 0
    assert ps.expires_at is not None and ps.expires_at > datetime.now(UTC)
    assert services.router.slot(healthy(services, "tiny-a.gguf")[0]).inflight == 0


async def test_generate_plain_raw_and_streamed(client: ollama.AsyncClient) -> None:
    reply = await client.generate("tiny-b", prompt="hello", options=SHORT)
    assert reply.response.startswith("zyxwvu") and reply.done and reply.eval_count == SHORT["num_predict"]
    raw = await client.generate("tiny-a", prompt="abc", raw=True, options={"num_predict": 5})
    assert raw.response == "defgh"
    parts = [p async for p in await client.generate("tiny-a", prompt="hi", stream=True, options=SHORT)]
    assert "".join(p.response for p in parts).startswith("abcdef") and parts[-1].done
    # A suffix means fill-in-the-middle: llama-server's /infill, whose refusal (the tiny models have
    # no FIM tokens) reaches the client as a 400 with llama-server's message.
    with pytest.raises(ollama.ResponseError) as err:
        await client.generate("tiny-a", prompt="abc", suffix="xyz", options=SHORT)
    assert err.value.status_code == 400 and "Infill" in err.value.error


async def test_embed_and_legacy_embeddings(client: ollama.AsyncClient) -> None:
    out = await client.embed("tiny-embed", input=["hello", "world"])
    assert len(out.embeddings) == 2 and all(len(v) == 64 for v in out.embeddings)
    assert out.prompt_eval_count and out.prompt_eval_count > 0
    legacy = await client.embeddings("tiny-embed", prompt="hello")
    assert len(legacy.embedding) == 64


async def test_tools_and_think_still_answer(client: ollama.AsyncClient) -> None:
    def get_weather(city: str) -> str:
        """Weather in a city.

        Args:
          city: the city
        """
        return "sunny"

    with_tools = await client.chat("tiny-a", messages=HELLO, tools=[get_weather], options=SHORT)
    assert (with_tools.message.content or "").startswith("abcdef")
    thinking = await client.chat("tiny-a", messages=HELLO, think=True, options=SHORT)
    assert (thinking.message.content or "").startswith("abcdef")


async def test_copy_alias_chat_then_delete(services: LlamaMan, client: ollama.AsyncClient) -> None:
    await client.copy("tiny-b", "my-model")
    names = {m.model for m in (await client.list()).models}
    assert {"my-model:latest", "tiny-b:latest"} <= names
    reply = await client.chat("my-model", messages=HELLO, options=SHORT)
    assert (reply.message.content or "").startswith("zyxwvu")
    assert (await client.delete("my-model:latest")).status == "success"
    names = {m.model for m in (await client.list()).models}
    assert "my-model:latest" not in names and "tiny-b:latest" in names
    with pytest.raises(ollama.ResponseError) as err:
        await client.copy("nope", "other")
    assert err.value.status_code == 404

    # Deleting a model file stops what serves it first, as Ollama does with a loaded model.
    assert healthy(services, "tiny-b.gguf")
    assert (await client.delete("tiny-b")).status == "success"
    assert not (services.library.models_dir / "tiny-b.gguf").exists()
    assert instances_of(services, "tiny-b.gguf") == []
    assert "tiny-b:latest" not in {m.model for m in (await client.list()).models}
    with pytest.raises(ollama.ResponseError) as err:
        await client.delete("tiny-b")
    assert err.value.status_code == 404


async def test_load_only_and_keep_alive_zero_unloads(services: LlamaMan, client: ollama.AsyncClient) -> None:
    loaded = await client.chat("tiny-a", messages=[])
    assert loaded.done and loaded.done_reason == "load" and healthy(services, "tiny-a.gguf")
    unloaded = await client.generate("tiny-a", prompt="", keep_alive=0)
    assert unloaded.done_reason == "unload" and not healthy(services, "tiny-a.gguf")

    reply = await client.chat("tiny-a", messages=HELLO, options=SHORT, keep_alive=0)
    assert (reply.message.content or "").startswith("abcdef")
    await wait_until(lambda: not healthy(services, "tiny-a.gguf"))


async def test_bigger_num_ctx_relaunches_the_model(services: LlamaMan, client: ollama.AsyncClient) -> None:
    await services.presets.put("tiny-a.gguf", {"ctx_size": 512})
    await client.chat("tiny-a", messages=HELLO, options=SHORT)
    [m] = healthy(services, "tiny-a.gguf")
    assert m.settings.ctx_size == 512
    assert (await client.show("tiny-a")).modelinfo["llama.context_length"] == 512

    reply = await client.chat("tiny-a", messages=HELLO, options={**SHORT, "num_ctx": 1024})
    assert (reply.message.content or "").startswith("abcdef")
    [m] = healthy(services, "tiny-a.gguf")
    assert m.settings.ctx_size == 1024
    assert m.proc.argv[m.proc.argv.index("-c") + 1] == "1024"
    assert [p.context_length for p in (await client.ps()).models] == [1024]


async def test_upstream_killed_mid_stream_ends_with_an_error_instead_of_hanging(
    base_url: str, services: LlamaMan
) -> None:
    # Nothing but the kill ends the stream: a relay that waited for a timer instead would leave the
    # client waiting, and fail on its read timeout here. The time the ending takes is not asserted: it
    # is the time to pass on what the kernel buffered before the kill, seconds on a loaded machine.
    client = ollama.AsyncClient(host=base_url, trust_env=False, timeout=httpx.Timeout(30, read=10))
    # A generation far longer than the way from the first line to the kill, however loaded the machine.
    options = {"num_predict": 30000, "num_ctx": 32768}
    try:
        stream = await client.chat("tiny-a", messages=HELLO, stream=True, options=options)
        first = await anext(stream)
        assert first.message.content == "a"
        [m] = healthy(services, "tiny-a.gguf")
        assert m.settings.ctx_size == 32768 and m.proc.pid is not None
        os.kill(m.proc.pid, signal.SIGKILL)
        with pytest.raises(ollama.ResponseError) as err:
            async for _ in stream:
                pass
    finally:
        await client.close()
    assert "stopped mid-stream" in err.value.error
    await wait_until(lambda: services.router.slot(m).inflight == 0, timeout=2)


async def test_client_gone_mid_stream_releases_the_instance(services: LlamaMan, base_url: str) -> None:
    body = {"model": "tiny-a", "messages": HELLO, "options": {"num_predict": 3000}}
    async with httpx.AsyncClient(base_url=base_url, timeout=10, trust_env=False) as http:
        async with http.stream("POST", "/api/chat", json=body) as r:
            assert r.headers["content-type"] == "application/x-ndjson"
            assert r.headers["x-accel-buffering"] == "no"
            async for _ in r.aiter_lines():
                break
    [m] = healthy(services, "tiny-a.gguf")
    await wait_until(lambda: services.router.slot(m).inflight == 0, timeout=2)
    # Closing upstream too frees llama-server's slot instead of generating for nobody. llama-server
    # notices the closed connection at its next token, so the slot is polled briefly: well under the
    # time the 3000 tokens take (about 1.5 s on an idle machine, far more under load).
    deadline = time.monotonic() + 1.0
    while True:
        slots = (await services.http.get(f"{m.base_url}/slots", headers=m.proc.auth_headers)).json()
        if not any(s.get("is_processing") for s in slots):
            break
        assert time.monotonic() < deadline, f"llama-server still generates for a client that left: {slots}"
        await asyncio.sleep(0.02)


async def test_instance_sampling_overrides_win(
    services: LlamaMan, client: ollama.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    await services.presets.put("tiny-a.gguf", {"sampling": {"temperature": 0.25, "top_k": 7}})
    sent: list[dict[str, Any]] = []
    real_open = services.relay.open

    async def spy(lease: Any, method: str, path: str, **kwargs: Any) -> httpx.Response:
        sent.append(json.loads(kwargs["content"]))
        return await real_open(lease, method, path, **kwargs)

    monkeypatch.setattr(services.relay, "open", spy)
    reply = await client.chat("tiny-a", messages=HELLO, options={**SHORT, "temperature": 1.5, "top_p": 0.5})
    assert (reply.message.content or "").startswith("abcdef")
    assert sent[-1]["temperature"] == 0.25 and sent[-1]["top_k"] == 7 and sent[-1]["top_p"] == 0.5
