"""Anthropic, llama-server-native and router-mode routes through a real listening proxy."""

from __future__ import annotations

import json
from typing import Any

import httpx

from llamaman.core.state import InstanceState
from tests.helpers import admin_headers

S = InstanceState
HI = [{"role": "user", "content": "hi"}]


async def test_anthropic_messages(http: httpx.AsyncClient) -> None:
    r = await http.post(
        "/v1/messages",
        json={"model": "tiny-a", "max_tokens": 6, "messages": HI},
        headers={"anthropic-version": "2023-06-01"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["type"] == "message" and body["role"] == "assistant"
    assert body["content"][0]["type"] == "text" and body["content"][0]["text"].startswith("abcdef")
    r = await http.post("/v1/messages/count_tokens", json={"model": "tiny-a", "messages": HI})
    assert r.status_code == 200 and r.json()["input_tokens"] > 0


async def test_anthropic_stream_and_errors(http: httpx.AsyncClient) -> None:
    body = {"model": "tiny-b", "max_tokens": 5, "messages": HI, "stream": True}
    text = ""
    async with http.stream("POST", "/v1/messages", json=body) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                event = json.loads(line[6:])
                if event.get("type") == "content_block_delta":
                    text += event["delta"].get("text", "")
    assert text.startswith("zyxw")
    r = await http.post("/v1/messages", json={"model": "nope", "max_tokens": 5, "messages": HI})
    assert r.status_code == 404
    assert r.json()["type"] == "error" and "nope" in r.json()["error"]["message"]


async def test_native_completion_tokenize_detokenize(http: httpx.AsyncClient) -> None:
    r = await http.post("/completion", json={"model": "tiny-a", "prompt": "abc", "n_predict": 4})
    assert r.status_code == 200, r.text
    assert r.json()["content"].startswith("defg")
    r = await http.post("/tokenize", json={"model": "tiny-a", "content": "hello world"})
    assert r.status_code == 200, r.text
    tokens = r.json()["tokens"]
    assert tokens
    r = await http.post("/detokenize", json={"model": "tiny-a", "tokens": tokens})
    assert r.status_code == 200 and r.json()["content"].strip() == "hello world"


async def test_native_embedding(http: httpx.AsyncClient) -> None:
    r = await http.post("/embedding", json={"model": "tiny-embed", "content": "hello"})
    assert r.status_code == 200, r.text
    first = r.json()[0]["embedding"]
    vector = first[0] if isinstance(first[0], list) else first
    assert len(vector) == 64


async def test_props_and_slots_by_query(http: httpx.AsyncClient) -> None:
    r = await http.get("/props", params={"model": "tiny-a"})
    assert r.status_code == 200, r.text
    assert r.json()["default_generation_settings"]["n_ctx"] > 0
    r = await http.get("/slots", params={"model": "tiny-a"})
    assert r.status_code == 200 and isinstance(r.json(), list)
    r = await http.get("/props")
    assert r.status_code == 400
    r = await http.get("/props", params={"model": "nope"})
    assert r.status_code == 404


async def test_autoload_false_does_not_start_a_model(services: Any, http: httpx.AsyncClient) -> None:
    r = await http.get("/props", params={"model": "tiny-b", "autoload": "false"})
    assert r.status_code == 400 and "not loaded" in r.json()["error"]["message"]
    assert services.supervisor.list() == []


async def test_upstream_reaches_any_path_of_the_models_server(services: Any, http: httpx.AsyncClient) -> None:
    r = await http.get("/upstream/tiny-a/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    r = await http.get("/upstream/tiny-a:latest/v1/models")
    assert r.status_code == 200 and r.json()["data"][0]["id"] == "tiny-a"
    r = await http.post("/upstream/tiny-a/tokenize", json={"content": "abc"})
    assert r.status_code == 200 and r.json()["tokens"]
    r = await http.get("/upstream/nope/health")
    assert r.status_code == 404
    assert len([m for m in services.supervisor.list() if m.state == S.HEALTHY]) == 1


async def test_upstream_accepts_a_model_in_a_subfolder(http: httpx.AsyncClient) -> None:
    r = await http.post("/upstream/embed/tiny-embed/embedding", json={"content": "hi"})
    assert r.status_code == 200, r.text


async def test_router_mode_load_list_unload(services: Any, http: httpx.AsyncClient) -> None:
    listed = (await http.get("/models")).json()
    assert listed["object"] == "list"
    status = {m["id"]: m["status"] for m in listed["data"]}
    assert status["tiny-a"] == {"value": "unloaded"}

    r = await http.post("/models/load", json={"model": "tiny-a"})
    assert r.status_code == 200 and r.json() == {"success": True}
    status = {m["id"]: m["status"] for m in (await http.get("/models")).json()["data"]}
    assert status["tiny-a"]["value"] == "loaded" and status["tiny-b"]["value"] == "unloaded"
    # Launch arguments are for those who manage the box: an admin key sees them, an inference key not.
    assert "args" not in status["tiny-a"]
    admin = await admin_headers(services)
    status = {m["id"]: m["status"] for m in (await http.get("/models", headers=admin)).json()["data"]}
    assert status["tiny-a"]["args"]

    r = await http.post("/models/unload", json={"model": "tiny-a"})
    assert r.status_code == 200 and r.json() == {"success": True}
    status = {m["id"]: m["status"] for m in (await http.get("/models")).json()["data"]}
    assert status["tiny-a"]["value"] == "unloaded"

    r = await http.post("/models/unload", json={"model": "tiny-a"})
    assert r.status_code == 400 and r.json()["error"]["message"] == "model is not running"
    r = await http.post("/models/load", json={"model": "nope"})
    assert r.status_code == 404
    r = await http.post("/models/load", json={})
    assert r.status_code == 400


async def test_health_and_root_on_the_proxy_port(services: Any, http: httpx.AsyncClient) -> None:
    r = await http.get("/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    # A path no rule names is management: an inference key is refused before the routing, an admin
    # key finds nothing there.
    assert (await http.get("/no/such/route")).status_code == 403
    r = await http.get("/no/such/route", headers=await admin_headers(services))
    assert r.status_code == 404


async def test_main_app_serves_the_proxy_routes_too(services: Any, api: httpx.AsyncClient) -> None:
    r = await api.post("/v1/chat/completions", json={"model": "tiny-a", "messages": HI, "max_tokens": 4})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"].startswith("abcd")
    r = await api.post("/v1/chat/completions", json={"model": "nope", "messages": HI})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = await api.get("/health")
    assert r.status_code == 200
