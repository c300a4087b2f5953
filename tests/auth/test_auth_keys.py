"""API keys on the model endpoints: model allow-lists, request rates, token usage, and a client set up
the way Open WebUI's OpenAI connection is, against real llama-servers behind the real proxy."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import httpx
import openai
import pytest

from llamaman.app import LlamaMan
from llamaman.core.state import InstanceState
from llamaman.instances.launch import LaunchSettings
from llamaman.proxy.app import ProxyServer
from tests.helpers import asgi

pytestmark = pytest.mark.auth

HI = [{"role": "user", "content": "hi"}]


async def test_a_key_limited_to_a_model_is_refused_the_others(box: LlamaMan) -> None:
    _, key = await box.auth.keys.create("only-a", allowed_models=["tiny-a"])
    await box.aliases.put("friendly", "tiny-a")
    await box.aliases.put("sneaky", "tiny-b")
    h = {"Authorization": f"Bearer {key}"}
    async with asgi(box) as c:
        r = await c.post("/v1/chat/completions", json={"model": "tiny-b", "messages": HI}, headers=h)
        assert r.status_code == 403 and r.json()["error"]["code"] == "permission_denied"
        assert "tiny-b" in r.json()["error"]["message"]
        r = await c.post("/api/chat", json={"model": "tiny-b", "messages": HI}, headers=h)
        assert r.status_code == 403 and "tiny-b" in r.json()["error"]
        r = await c.post("/v1/messages", json={"model": "tiny-b", "max_tokens": 4, "messages": HI}, headers=h)
        assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error"
        assert (await c.get("/props", params={"model": "tiny-b"}, headers=h)).status_code == 403
        assert (await c.get("/upstream/tiny-b/health", headers=h)).status_code == 403
        copy = {"source": "tiny-b", "destination": "tiny-a-copy"}
        assert (await c.post("/api/copy", json=copy, headers=h)).status_code == 403
        assert (await c.post("/api/show", json={"model": "sneaky"}, headers=h)).status_code == 403

        # Allowed names pass, by file stem, ':latest' or an alias of an allowed model; the body the
        # middleware read is handed on intact.
        for name in ("tiny-a", "tiny-a:latest", "friendly"):
            r = await c.post("/api/show", json={"model": name}, headers=h)
            assert r.status_code == 200, r.text
        assert (await c.get("/v1/models", headers=h)).status_code == 200
    async with asgi(box, "main") as c:
        assert (await c.get("/api/instances", headers=h)).status_code == 403  # cannot manage either
    assert box.supervisor.list() == []  # nothing was started by any of it


async def test_allow_lists_are_globs_over_names_and_paths(box: LlamaMan) -> None:
    _, tinies = await box.auth.keys.create("tinies", allowed_models=["tiny-*"])
    _, embed = await box.auth.keys.create("embeddings", allowed_models=["embed/*"])
    async with asgi(box) as c:
        for key, model, status in (
            (tinies, "tiny-b", 200), (tinies, "tiny-embed", 200),
            (embed, "tiny-embed", 200), (embed, "tiny-a", 403),
        ):  # fmt: skip
            r = await c.post("/api/show", json={"model": model}, headers={"x-api-key": key})
            assert r.status_code == status, (model, r.text)


async def test_a_key_limited_to_five_requests_a_minute_gets_429_on_the_sixth(box: LlamaMan) -> None:
    _, slow = await box.auth.keys.create("slow", rpm_limit=5)
    _, other = await box.auth.keys.create("other")
    async with asgi(box) as c:
        for _ in range(5):
            assert (await c.get("/v1/models", headers={"Authorization": f"Bearer {slow}"})).status_code == 200
        r = await c.get("/v1/models", headers={"Authorization": f"Bearer {slow}"})
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limit_exceeded"
        assert 1 <= int(r.headers["retry-after"]) <= 60
        r = await c.get("/api/tags", headers={"x-api-key": slow})
        assert r.status_code == 429 and "5 requests per minute" in r.json()["error"]
        assert (await c.get("/v1/models", headers={"Authorization": f"Bearer {other}"})).status_code == 200


def test_the_window_slides() -> None:
    from llamaman.auth.apikeys import RateLimiter

    rates = RateLimiter()
    assert all(rates.check("k", 2, now=t) is None for t in (0.0, 10.0))
    assert rates.check("k", 2, now=30.0) == 30
    assert rates.check("k", 2, now=60.5) is None  # the first request left the window


async def test_open_webui_openai_connection_with_a_key(services: LlamaMan, proxy: ProxyServer) -> None:
    assert services.runtime.current.require_auth  # the default
    async with httpx.AsyncClient(base_url=proxy.url, trust_env=False, timeout=60) as c:
        r = await c.get("/v1/models")
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
        r = await c.post("/v1/chat/completions", json={"model": "tiny-a", "messages": HI, "max_tokens": 8})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert services.supervisor.list() == []

    _, key = await services.auth.keys.create("open-webui")
    oai = openai.AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key=key, max_retries=0, timeout=60)
    try:
        assert "tiny-a" in {m.id for m in (await oai.models.list()).data}
        reply = await oai.chat.completions.create(model="tiny-a", messages=HI, max_tokens=8)  # type: ignore[arg-type]
        assert (reply.choices[0].message.content or "").startswith("abcdef")
        stream = await oai.chat.completions.create(
            model="tiny-a",
            messages=HI,
            max_tokens=8,
            stream=True,  # type: ignore[arg-type]
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text.startswith("abcdef")
    finally:
        await oai.close()
    wrong = openai.AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key="llm-wrong", max_retries=0, timeout=60)
    try:
        with pytest.raises(openai.AuthenticationError):
            await wrong.models.list()
    finally:
        await wrong.close()

    # The Ollama surface counts against the key as well.
    async with httpx.AsyncClient(base_url=proxy.url, trust_env=False, timeout=60) as c:
        body = {"model": "tiny-a", "messages": HI, "stream": False, "options": {"num_predict": 4}}
        r = await c.post("/api/chat", json=body, headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200, r.text

    usage = await key_usage(services, "open-webui")
    assert usage["requests"] == 3 and usage["prompt_tokens"] > 0 and usage["completion_tokens"] >= 8 + 8 + 4
    [day] = usage["by_day"]
    assert day["model"] == "tiny-a" and day["day"] == datetime.now(UTC).strftime("%Y-%m-%d")
    assert usage["by_model"]["tiny-a"]["requests"] == 3


async def key_usage(services: LlamaMan, name: str) -> dict[str, Any]:
    async with asgi(services, "main") as c:
        _, admin = await services.auth.keys.create("admin", scope="admin")
        listing = (await c.get("/api/api-keys", headers={"x-api-key": admin})).json()
    [entry] = [k for k in listing if k["name"] == name]
    assert entry["last_used_at"] and entry["last_used_at"] <= time.time()
    return entry["usage"]  # type: ignore[no-any-return]


async def test_instance_ports_need_a_key_while_the_toggle_is_on(services: LlamaMan) -> None:
    m = await services.supervisor.launch(LaunchSettings(model_path="tiny-a.gguf", ctx_size=512))
    assert await m.proc.wait_for({InstanceState.HEALTHY, InstanceState.FAILED}, 30) == InstanceState.HEALTHY
    _, key = await services.auth.keys.create("instance")
    _, only_b = await services.auth.keys.create("only-b", allowed_models=["tiny-b"])
    body = {"messages": HI, "max_tokens": 6}
    port = f"http://127.0.0.1:{m.record.port}"
    async with httpx.AsyncClient(base_url=port, trust_env=False, timeout=30) as c:
        assert (await c.get("/health")).status_code == 200
        assert (await c.post("/v1/chat/completions", json=body)).status_code == 401
        r = await c.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"].startswith("abcdef")
        # The port serves tiny-a whatever the body says, so a key for tiny-b is refused here.
        r = await c.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {only_b}"})
        assert r.status_code == 403
        await services.runtime.update({"require_auth": False})  # at once, no restart
        assert (await c.post("/v1/chat/completions", json=body)).status_code == 200
