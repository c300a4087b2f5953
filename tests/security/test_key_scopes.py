"""Key scopes: an inference key (the default, and what Open WebUI holds) reaches the model endpoints
only; managing LlamaMan and Ollama's routes that delete, copy, pull or create models need an admin key
or a signed-in user on every port, whatever the require-auth toggle says."""

from __future__ import annotations

import base64
import importlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from starlette.types import ASGIApp

from llamaman.app import LlamaMan
from llamaman.auth.sessions import SESSION_COOKIE
from llamaman.core.config import Settings

pytestmark = pytest.mark.auth

HI = [{"role": "user", "content": "hi"}]


@dataclass
class Box:
    services: LlamaMan
    inference: str
    admin: str
    session: str


@pytest.fixture
async def box(make_settings: Callable[..., Settings]) -> AsyncIterator[Box]:
    services = LlamaMan(make_settings())
    await services.start()
    try:
        _, inference = await services.auth.keys.create("open-webui")
        _, admin = await services.auth.keys.create("ops", scope="admin")
        user = await services.auth.create_first_admin("admin", "a long password")
        yield Box(services, inference, admin, await services.auth.new_session(user))
    finally:
        await services.stop()


def surfaces(services: LlamaMan) -> dict[str, ASGIApp]:
    """The three kinds of port, each behind its auth layer (the instance port of an instance that
    does not exist: whatever passes the guard there gets 503)."""
    from llamaman.app import create_app
    from llamaman.proxy.app import create_proxy_app

    listeners = importlib.import_module("llamaman.proxy.listeners")
    return {
        "main": create_app(services, manage_lifecycle=False),
        "proxy": create_proxy_app(services),
        "instance": services.listeners.wrap(listeners.create_instance_app(services, "no-such-instance")),
    }


def client(app: ASGIApp) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://llamaman.test")


def ways(key: str) -> list[dict[str, str]]:
    """Every way a client can present a key."""
    basic = base64.b64encode(f"user:{key}".encode()).decode()
    return [{"Authorization": f"Bearer {key}"}, {"x-api-key": key}, {"Authorization": f"Basic {basic}"}]


# What an inference key must never do: (method, path, JSON body).
MANAGEMENT: tuple[tuple[str, str, dict[str, Any] | None], ...] = (
    ("POST", "/api/instances", {"model_path": "tiny-a.gguf", "ctx_size": 512}),
    ("POST", "/api/settings", {"require_auth": False}),
    ("POST", "/api/api-keys", {"name": "mine", "scope": "admin"}),
    ("GET", "/api/api-keys", None),
    ("POST", "/api/models/delete", {"path": "tiny-a.gguf"}),
    ("DELETE", "/api/delete", {"model": "tiny-a"}),
    ("POST", "/api/copy", {"source": "tiny-a", "destination": "stolen"}),
    ("POST", "/api/pull", {"model": "hf.co/user/repo:Q4_K_M"}),
    ("POST", "/api/push", {"model": "tiny-a"}),
    ("POST", "/api/create", {"model": "new", "from": "tiny-a"}),
    ("POST", "/api/blobs/sha256:0123", None),
)


def assert_untouched(services: LlamaMan) -> None:
    assert services.supervisor.list() == []
    assert services.runtime.current.require_auth is True
    assert sorted(r.name for r in services.auth.keys.by_id.values()) == ["open-webui", "ops"]
    assert (services.library.models_dir / "tiny-a.gguf").exists()
    assert "stolen" not in services.aliases.aliases
    assert services.downloads.list() == []


async def test_an_inference_key_cannot_manage_on_any_port(box: Box) -> None:
    for surface, app in surfaces(box.services).items():
        async with client(app) as c:
            for n, (method, path, body) in enumerate(MANAGEMENT):
                headers = ways(box.inference)[n % 3]
                r = await c.request(method, path, json=body, headers=headers)
                assert r.status_code == 403, (surface, method, path, r.status_code, r.text)
                error = r.json()["error"]
                text = error if isinstance(error, str) else error["message"]
                assert "inference" in text and "admin" in text, text
    assert_untouched(box.services)


async def test_refusals_speak_the_callers_dialect(box: Box) -> None:
    h = {"Authorization": f"Bearer {box.inference}"}
    async with client(surfaces(box.services)["proxy"]) as c:
        r = await c.request("DELETE", "/api/delete", json={"model": "tiny-a"}, headers=h)
        assert r.status_code == 403 and isinstance(r.json()["error"], str)  # Ollama's {"error": "..."}
        assert "admin API key" in r.json()["error"]
    async with client(surfaces(box.services)["main"]) as c:
        r = await c.post("/api/instances", json={"model_path": "tiny-a.gguf"}, headers=h)
        assert r.status_code == 403 and r.json()["error"] == r.json()["detail"]  # the REST API's shape
    assert_untouched(box.services)


async def test_the_same_paths_spelled_otherwise_are_refused_too(box: Box) -> None:
    h = {"x-api-key": box.inference}
    spellings = (
        ("DELETE", "/api/delete/"), ("DELETE", "/API/delete"), ("DELETE", "//api/delete"),
        ("DELETE", "/api/./delete"), ("DELETE", "/api/%64elete"), ("POST", "/api/copy?x=1"),
        ("POST", "/api/pull/"), ("DELETE", "/api/delete%2F"), ("POST", "/api/instances/"),
        ("POST", "/api/settings?require_auth=false"), ("POST", "/api/api-keys/"),
    )  # fmt: skip
    for surface in ("main", "proxy"):
        async with client(surfaces(box.services)[surface]) as c:
            for method, path in spellings:
                body = {"model": "tiny-a", "source": "tiny-a", "destination": "stolen", "name": "x"}
                r = await c.request(method, path, json=body, headers=h)
                assert r.status_code in (403, 404, 405), (surface, path, r.status_code, r.text)
                assert r.status_code != 200
    assert_untouched(box.services)


async def test_an_admin_key_and_a_session_may(box: Box) -> None:
    services = box.services
    async with client(surfaces(services)["main"]) as c:
        session = {"Cookie": f"{SESSION_COOKIE}={box.session}", "Origin": "http://llamaman.test"}
        for headers in (ways(box.admin)[0], session):
            assert (await c.get("/api/api-keys", headers=headers)).status_code == 200
            r = await c.post("/api/settings", json={"max_models": 3}, headers=headers)
            assert r.status_code == 200, r.text
            # Launching needs a llama-server; here it gets as far as the model lookup, past the guard.
            r = await c.post("/api/instances", json={"model_path": "no-such.gguf"}, headers=headers)
            assert r.status_code not in (401, 403) and r.status_code < 500, r.text
        r = await c.post("/api/api-keys", json={"name": "made-by-admin"}, headers=ways(box.admin)[1])
        assert r.status_code == 201 and r.json()["scope"] == "inference"
    async with client(surfaces(services)["proxy"]) as c:
        h = ways(box.admin)[2]
        r = await c.post("/api/copy", json={"source": "tiny-b", "destination": "copied"}, headers=h)
        assert r.status_code == 200, r.text
        assert services.aliases.aliases["copied"]
        r = await c.request("DELETE", "/api/delete", json={"model": "tiny-b"}, headers=h)
        assert r.status_code == 200, r.text
    assert not (services.library.models_dir / "tiny-b.gguf").exists()


async def test_with_require_auth_off_destructive_ollama_routes_still_need_admin(box: Box) -> None:
    services = box.services
    await services.runtime.update({"require_auth": False})
    for surface in ("main", "proxy"):
        async with client(surfaces(services)[surface]) as c:
            # Model endpoints are open to anyone now...
            assert (await c.get("/api/tags")).status_code == 200
            assert (await c.get("/v1/models")).status_code == 200
            # ...but deleting, copying, pulling and creating models are not.
            for method, path, body in MANAGEMENT:
                if not path.startswith(("/api/delete", "/api/copy", "/api/pull", "/api/push", "/api/create")):
                    continue
                r = await c.request(method, path, json=body)
                assert r.status_code == 401, (surface, path, r.text)
                assert "admin API key" in r.json()["error"]
                r = await c.request(method, path, json=body, headers=ways(box.inference)[0])
                assert r.status_code == 403, (surface, path, r.text)
    assert (services.library.models_dir / "tiny-a.gguf").exists() and "stolen" not in services.aliases.aliases
    # A signed-in user may, where the session cookie counts: on the main port, from its own pages.
    cookie = {"Cookie": f"{SESSION_COOKIE}={box.session}", "Origin": "http://llamaman.test"}
    async with client(surfaces(services)["main"]) as c:
        r = await c.post("/api/copy", json={"source": "tiny-a", "destination": "by-session"}, headers=cookie)
        assert r.status_code == 200, r.text
    async with client(surfaces(services)["proxy"]) as c:
        r = await c.post("/api/copy", json={"source": "tiny-a", "destination": "nope"}, headers=cookie)
        assert r.status_code == 401, r.text


async def test_an_inference_key_still_uses_the_model_endpoints(box: Box) -> None:
    h = ways(box.inference)[0]
    for surface in ("main", "proxy"):
        async with client(surfaces(box.services)[surface]) as c:
            assert (await c.get("/api/tags", headers=h)).status_code == 200
            assert (await c.get("/api/ps", headers=h)).status_code == 200
            assert (await c.get("/v1/models", headers=h)).status_code == 200
            assert (await c.get("/models", headers=h)).status_code == 200
            assert (await c.post("/api/show", json={"model": "tiny-a"}, headers=h)).status_code == 200
            assert (await c.get("/api/version", headers=h)).status_code == 200


async def test_keys_from_the_environment_get_their_scope(make_settings: Callable[..., Settings]) -> None:
    env = {
        "LLAMAMAN_API_KEYS": "plain-env-key-1, both-env-key-2",
        "LLAMAMAN_ADMIN_API_KEYS": "both-env-key-2",
    }
    services = LlamaMan(make_settings(**env))
    await services.start()
    try:
        async with client(surfaces(services)["main"]) as c:
            r = await c.get("/api/api-keys", headers={"x-api-key": "plain-env-key-1"})
            assert r.status_code == 403
            r = await c.get("/api/api-keys", headers={"x-api-key": "both-env-key-2"})
            assert r.status_code == 200
            assert {k["name"]: k["scope"] for k in r.json()} == {
                "env-key-1": "inference", "env-admin-key-1": "admin",
            }  # fmt: skip
            assert (await c.get("/v1/models", headers={"x-api-key": "plain-env-key-1"})).status_code == 200
            # The settings page names neither list.
            shown = (await c.get("/api/settings", headers={"x-api-key": "both-env-key-2"})).text
            assert "plain-env-key-1" not in shown and "both-env-key-2" not in shown
    finally:
        await services.stop()


async def test_a_restricted_key_cannot_be_an_admin_key(box: Box) -> None:
    async with client(surfaces(box.services)["main"]) as c:
        body = {"name": "odd", "scope": "admin", "allowed_models": ["tiny-*"]}
        r = await c.post("/api/api-keys", json=body, headers=ways(box.admin)[0])
        assert r.status_code == 422 and "allowed_models" in r.json()["error"]
    with pytest.raises(ValueError):
        await box.services.auth.keys.create("odd", ["tiny-*"], scope="admin")


async def test_official_clients_chat_with_an_inference_key_but_cannot_change_models(
    services: LlamaMan, proxy: Any
) -> None:
    """The openai and ollama clients, as Open WebUI's two connections use them, against a real
    llama-server: chatting works with an inference key, deleting, copying and pulling models does not."""
    import ollama
    import openai

    _, key = await services.auth.keys.create("open-webui")
    oai = openai.AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key=key, max_retries=0, timeout=60)
    try:
        reply = await oai.chat.completions.create(model="tiny-a", messages=HI, max_tokens=6)  # type: ignore[arg-type]
        assert (reply.choices[0].message.content or "").startswith("abcd")
    finally:
        await oai.close()
    client = ollama.AsyncClient(host=proxy.url, headers={"Authorization": f"Bearer {key}"}, trust_env=False)
    try:
        answer = await client.chat("tiny-a", messages=HI, options={"num_predict": 4})
        assert (answer.message.content or "").startswith("abcd")
        assert "tiny-b:latest" in {m.model for m in (await client.list()).models}
        for attempt in (
            client.delete("tiny-b"),
            client.copy("tiny-b", "mine"),
            client.pull("hf.co/user/repo:Q4_K_M", stream=False),
        ):
            with pytest.raises(ollama.ResponseError) as err:
                await attempt
            assert err.value.status_code == 403 and "admin" in err.value.error
    finally:
        await client.close()
    assert (services.library.models_dir / "tiny-b.gguf").exists() and "mine" not in services.aliases.aliases
