"""Cross-site requests: a page on another port of the same host is same-site, so the browser sends
the session cookie along. The cookie must count for nothing off the main port, and on the main port a
change made with it must come from LlamaMan's own origin, as JSON. Model endpoints take JSON only.

Each attack runs against real uvicorn servers on loopback, as a browser would send it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from llamaman.core.config import Settings
from llamaman.proxy.app import main_port_models
from llamaman.testing.tiny_gguf import expected_text
from tests.security.signin_support import Box, cookie, served

pytestmark = pytest.mark.auth

COPY = '{"source": "tiny-a", "destination": "stolen"}'
# What `fetch(url, {mode: "no-cors", credentials: "include", headers: {"Content-Type": "text/plain"}})`
# sends from a page on http://127.0.0.1:<another port>.
NO_CORS = {
    "Content-Type": "text/plain;charset=UTF-8",
    "Sec-Fetch-Site": "same-site",
    "Sec-Fetch-Mode": "no-cors",
}


@pytest.fixture
async def box(make_settings: Callable[..., Settings]) -> AsyncIterator[Box]:
    async with served(make_settings) as b:
        yield b


def evil_origin(box: Box) -> str:
    host, port = box.main.rsplit(":", 1)
    return f"{host}:{int(port) + 1}"  # same host, another port: same-site, not same-origin


@pytest.mark.parametrize("require_auth", [True, False], ids=["auth-on", "auth-off"])
async def test_the_no_cors_copy_on_the_proxy_port_makes_no_alias(box: Box, require_auth: bool) -> None:
    await box.services.runtime.update({"require_auth": require_auth})
    session = await box.sign_in()
    headers = {**cookie(session), **NO_CORS, "Origin": evil_origin(box)}
    async with box.client(box.proxy) as c:
        r = await c.post("/api/copy", content=COPY, headers=headers)
        # The cookie is no credential there, and copying needs an admin key whatever require-auth says.
        assert r.status_code == 401, r.text
        assert isinstance(r.json()["error"], str)  # Ollama's dialect
        for form in ("application/x-www-form-urlencoded", "multipart/form-data; boundary=x", ""):
            r = await c.post("/api/copy", content=COPY, headers={**headers, "Content-Type": form})
            assert r.status_code in (401, 415), (form, r.status_code, r.text)
    assert "stolen" not in box.aliases()


async def test_the_cookie_counts_for_nothing_on_the_proxy_and_instance_ports(box: Box) -> None:
    session = await box.sign_in()
    for base in (box.proxy, box.instance):
        async with box.client(base, headers={**cookie(session), "Origin": base}) as c:
            for method, path in (("GET", "/api/tags"), ("GET", "/v1/models"), ("GET", "/api/instances")):
                r = await c.request(method, path)
                assert r.status_code == 401, (base, path, r.status_code, r.text)
            r = await c.post("/api/copy", json={"source": "tiny-a", "destination": "stolen"})
            assert r.status_code == 401, (base, r.text)
    # The same cookie works where the UI lives.
    async with box.client(headers=cookie(session)) as c:
        assert (await c.get("/api/tags")).status_code == 200
        assert (await c.get("/api/instances")).status_code == 200
    assert "stolen" not in box.aliases()


async def test_the_copy_on_the_main_port_from_another_origin_is_refused(box: Box) -> None:
    session = await box.sign_in()
    evil = evil_origin(box)
    async with box.client(headers=cookie(session)) as c:
        json = {"Content-Type": "application/json"}
        attempts = [
            {**NO_CORS, "Origin": evil},  # the reproduced attack
            {**json, "Origin": evil},  # JSON from elsewhere (its preflight would fail anyway)
            {**json, "Origin": "null"},  # a sandboxed frame, a file:// page
            {**json, "Origin": "http://evil.example"},
            {**json, "Origin": f"{box.main}.evil.example"},
            {**json, "Sec-Fetch-Site": "cross-site"},
            {**json, "Sec-Fetch-Site": "same-site", "Origin": box.main},
            json,  # neither Origin nor Sec-Fetch-Site: not a browser on LlamaMan's own page
        ]
        for headers in attempts:
            r = await c.post("/api/copy", content=COPY, headers=headers)
            assert r.status_code == 403, (headers, r.status_code, r.text)
            assert "session cookie" in r.json()["error"]
            r = await c.post("/api/api-keys", json={"name": "stolen"}, headers=headers)
            assert r.status_code == 403, (headers, r.text)
        # Reading stays possible (what a browser lets another page read is CORS's business).
        assert (await c.get("/api/instances", headers={"Origin": evil})).status_code == 200
    assert "stolen" not in box.aliases()
    assert [k["name"] for k in await box.services.auth.keys.listing()] == []


async def test_form_and_text_bodies_with_the_cookie_are_refused_even_from_the_same_origin(box: Box) -> None:
    session = await box.sign_in()
    async with box.client(headers={**cookie(session), "Origin": box.main}) as c:
        for kind in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
            r = await c.post("/api/copy", content=COPY, headers={"Content-Type": kind})
            assert r.status_code == 415, (kind, r.text)
            r = await c.post("/api/api-keys", content='{"name": "stolen"}', headers={"Content-Type": kind})
            assert r.status_code == 415 and "application/json" in r.json()["error"], (kind, r.text)
    assert "stolen" not in box.aliases()


async def test_a_same_origin_json_request_from_the_ui_still_works(box: Box) -> None:
    session = await box.sign_in()
    async with box.client(headers=cookie(session)) as c:
        browser = {"Origin": box.main, "Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "cors"}
        r = await c.post("/api/copy", json={"source": "tiny-a", "destination": "mine"}, headers=browser)
        assert r.status_code == 200, r.text
        # No Origin (some browsers omit it on same-origin requests) but Sec-Fetch-Site says same-origin.
        r = await c.post(
            "/api/copy", json={"source": "tiny-a", "destination": "mine-too"},
            headers={"Sec-Fetch-Site": "same-origin"},
        )  # fmt: skip
        assert r.status_code == 200, r.text
        # JSON with a charset, and a +json media type, are JSON.
        for kind in ("application/json; charset=utf-8", "application/merge-patch+json"):
            r = await c.post(
                "/api/api-keys", content='{"name": "ui"}', headers={**browser, "Content-Type": kind}
            )
            assert r.status_code == 201, (kind, r.text)
        # A change without a body needs no content type.
        key_id = r.json()["id"]
        assert (await c.delete(f"/api/api-keys/{key_id}", headers=browser)).status_code == 200
    assert {"mine", "mine-too"} <= set(box.aliases())


async def test_model_endpoints_take_json_only_in_each_dialect_on_every_port(box: Box) -> None:
    _, key = await box.services.auth.keys.create("client")
    _, admin_key = await box.services.auth.keys.create("ops", scope="admin")
    bearer = {"Authorization": f"Bearer {key}", "Content-Type": "text/plain"}
    body = '{"model": "tiny-a", "messages": [{"role": "user", "content": "hi"}]}'
    for base in (box.main, box.proxy):
        async with box.client(base, headers=bearer) as c:
            r = await c.post("/api/chat", content=body)
            assert r.status_code == 415 and "application/json" in r.json()["error"], r.text
            r = await c.post("/v1/chat/completions", content=body)
            assert r.status_code == 415, r.text
            error = r.json()["error"]
            assert error["code"] == "unsupported_media_type" and "application/json" in error["message"]
            r = await c.post("/v1/messages", content=body)
            assert r.status_code == 415 and r.json()["type"] == "error", r.text
            assert r.json()["error"]["type"] == "invalid_request_error"
            form = {"Content-Type": "application/x-www-form-urlencoded"}
            form["Authorization"] = f"Bearer {admin_key}"
            r = await c.post("/api/copy", content=COPY, headers=form)
            assert r.status_code == 415, r.text
    async with box.client(box.instance, headers=bearer) as c:
        r = await c.post("/v1/chat/completions", content=body)
        assert r.status_code == 415, r.text
    assert "stolen" not in box.aliases()


async def test_the_official_clients_still_get_through(box: Box) -> None:
    """The ollama and openai Python clients send JSON as they are: no 415 for them."""
    import ollama
    import openai

    _, key = await box.services.auth.keys.create("clients")
    _, admin_key = await box.services.auth.keys.create("ops", scope="admin")
    for base in (box.main, box.proxy):
        # Copying changes the box: an admin key; everything else with the inference key.
        admin = ollama.AsyncClient(host=base, headers={"Authorization": f"Bearer {admin_key}"})
        await admin.copy("tiny-a", f"copied-{base.rsplit(':', 1)[1]}")
        oc = ollama.AsyncClient(host=base, headers={"Authorization": f"Bearer {key}"})
        assert any(m.model for m in (await oc.list()).models)
        with pytest.raises(ollama.ResponseError) as info:  # reaches the proxy: the model is unknown
            await oc.chat(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
        assert info.value.status_code == 404

        client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0)
        assert [m async for m in client.models.list()]
        with pytest.raises(openai.NotFoundError):
            await client.chat.completions.create(
                model="no-such-model", messages=[{"role": "user", "content": "hi"}]
            )
        await client.close()
    assert {a for a in box.aliases() if a.startswith("copied-")} and len(box.aliases()) == 2


async def test_signing_in_and_setting_up_take_json_only(box: Box) -> None:
    """A form or text/plain body cannot sign a browser in (or create the first admin) behind its back."""
    body = '{"username": "admin", "password": "correct horse battery"}'
    async with box.client() as c:
        for kind in ("text/plain", "application/x-www-form-urlencoded"):
            for path in ("/api/auth/login", "/api/auth/setup"):
                r = await c.post(path, content=body, headers={"Content-Type": kind})
                assert r.status_code in (415, 422), (path, kind, r.status_code, r.text)
                assert "llamaman_session" not in r.headers.get("set-cookie", "")


def said(r: httpx.Response) -> str:
    return str(r.json()["choices"][0]["message"]["content"])


@pytest.mark.llama
async def test_a_chat_with_the_cookie_from_another_origin_is_refused_by_the_main_port_past_its_fast_lane(
    make_settings: Callable[..., Settings], llama_server_bin: str
) -> None:
    # With keys not required the lane serves a keyless chat at once; the same chat carrying the
    # session cookie must still meet the cookie's origin check, which lives on the full path.
    async with served(make_settings, LLAMA_SERVER_BIN=llama_server_bin) as box:
        assert box.lane is not None
        taken = 0
        answer = box.lane.answer

        async def counted(*args: Any) -> Any:
            nonlocal taken
            taken += 1
            return await answer(*args)

        box.lane.answer = counted  # type: ignore[method-assign]
        session = await box.sign_in()
        await box.services.runtime.update({"require_auth": False})
        await box.services.router.load("tiny-a")
        chat = {"model": "tiny-a", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
        async with box.client() as c:
            r = await c.post("/v1/chat/completions", json=chat)
            assert r.status_code == 200 and said(r) == expected_text("A", 3)
            assert taken == 1  # the plain keyless chat: the lane's
            for headers in ({"Origin": evil_origin(box)}, {"Sec-Fetch-Site": "cross-site"}, {}):
                r = await c.post("/v1/chat/completions", json=chat, headers={**cookie(session), **headers})
                assert r.status_code == 403 and "session cookie" in r.text, (headers, r.text)
            # From LlamaMan's own page the cookie's user chats, on the full path.
            same = {**cookie(session), "Origin": box.main, "Sec-Fetch-Site": "same-origin"}
            r = await c.post("/v1/chat/completions", json=chat, headers=same)
            assert r.status_code == 200 and said(r) == expected_text("A", 3)
        assert taken == 1


@pytest.mark.llama
async def test_model_requests_sent_past_the_ui_app_still_meet_the_cookies_origin_check(
    make_settings: Callable[..., Settings], llama_server_bin: str
) -> None:
    # The main port sends a model request without a cookie past the UI's app, to the proxy's app. A
    # request with the cookie from another origin must be refused in every dialect, and that app must
    # itself hold the cookie to the main port's checks: it is guarded as the main port, not as the
    # proxy port, which ignores the cookie (and, with keys not required, would answer).
    async with served(make_settings, LLAMA_SERVER_BIN=llama_server_bin) as box:
        session = await box.sign_in()
        await box.services.runtime.update({"require_auth": False})
        await box.services.router.load("tiny-a")
        hi = [{"role": "user", "content": "hi"}]
        chat = {"model": "tiny-a", "messages": hi, "max_tokens": 2}
        short = {"model": "tiny-a", "stream": False, "options": {"num_predict": 2}}
        attempts = [
            ("/api/chat", {**short, "messages": hi}),
            ("/api/generate", {**short, "prompt": "hi"}),
            ("/v1/messages", chat),
            ("/v1/completions?x=1", {"model": "tiny-a", "prompt": "hi", "max_tokens": 2}),
            ("/v1/chat/completions", {**chat, "stream": True}),
        ]
        evil = {**cookie(session), "Origin": evil_origin(box)}
        models = main_port_models(box.services)
        for base, transport in ((box.main, None), ("http://127.0.0.1", httpx.ASGITransport(app=models))):
            client = httpx.AsyncClient(base_url=base, transport=transport, timeout=60, trust_env=False)
            async with client as c:
                for path, body in attempts:
                    r = await c.post(path, json=body, headers=evil)
                    assert r.status_code == 403 and "session cookie" in r.text, (base, path, r.status_code)
                    # Without the cookie the same request is answered: keys are not required here.
                    assert (await c.post(path, json=body)).status_code == 200, (base, path)
