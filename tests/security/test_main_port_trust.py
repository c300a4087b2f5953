"""The main port serves model requests on the fast lane, and sends the other model requests without a
cookie past the UI's app to the proxy's app guarded as the main port. Neither may be a way around a
check: a key's model list in every dialect and spelling, a box that requires a key, and paths that
only look like a model route."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import pytest

from llamaman.app import LlamaMan, create_app
from llamaman.proxy.app import ProxyServer
from llamaman.testing.tiny_gguf import expected_text

pytestmark = [pytest.mark.auth, pytest.mark.llama]

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture
async def main_port(services: LlamaMan) -> AsyncIterator[str]:
    """The main port as ``main.py`` serves it: the UI's app, with the main port's protocol."""
    server = ProxyServer(
        create_app(services, manage_lifecycle=False), "127.0.0.1", 0, protocol=services.main_protocol()
    )
    await server.start()
    try:
        yield server.url
    finally:
        await server.stop()


def _bodies(model: str) -> dict[str, dict[str, object]]:
    """A request for ``model`` on each model route, in its own dialect."""
    return {
        "/v1/chat/completions": {"model": model, "messages": HI, "max_tokens": 2},
        "/v1/completions": {"model": model, "prompt": "hi", "max_tokens": 2},
        "/v1/embeddings": {"model": model, "input": "hi"},
        "/v1/messages": {"model": model, "messages": HI, "max_tokens": 2},
        "/api/chat": {"model": model, "messages": HI, "stream": False, "options": {"num_predict": 2}},
        "/api/generate": {"model": model, "prompt": "hi", "stream": False, "options": {"num_predict": 2}},
    }


async def test_a_key_limited_to_one_model_gets_no_other_on_the_main_port_in_any_dialect_or_spelling(
    services: LlamaMan, main_port: str
) -> None:
    await services.router.load("tiny-a")
    await services.router.load("tiny-b")  # loaded and idle: the lane would have a place for it at once
    _, key = await services.auth.keys.create("only-a", allowed_models=["tiny-a"])
    auth = {"authorization": f"Bearer {key}", "x-api-key": key}
    async with httpx.AsyncClient(base_url=main_port, timeout=60, trust_env=False) as c:
        for name in ("tiny-b", "tiny-b:latest", "tiny-b.gguf", " tiny-b ", "TINY-B"):
            for path, body in _bodies(name).items():
                headers = (
                    {"x-api-key": key} if path == "/v1/messages" else {"authorization": auth["authorization"]}
                )
                r = await c.post(path, json=body, headers=headers)
                assert r.status_code in (400, 403, 404), (path, name, r.status_code, r.text)
        # The same request with a query, or a duplicated "model", is no way round the list either.
        for path, raw in (
            (
                "/v1/chat/completions?x=1",
                b'{"model": "tiny-b", "messages": [{"role": "user", "content": "hi"}]}',
            ),
            (
                "/v1/chat/completions",
                b'{"model": "tiny-a", "messages": [{"role": "user", "content": "hi"}], "model": "tiny-b"}',
            ),
            (
                "/v1/chat/completions",
                b'{"model": "tiny-\\u0062", "messages": [{"role": "user", "content": "hi"}]}',
            ),
        ):
            r = await c.post(
                path,
                content=raw,
                headers={"authorization": auth["authorization"], "content-type": "application/json"},
            )
            assert r.status_code in (400, 403), (path, raw, r.status_code, r.text)
        # Its own model it gets.
        r = await c.post(
            "/v1/chat/completions",
            json=_bodies("tiny-a")["/v1/chat/completions"],
            headers={"authorization": auth["authorization"]},
        )
        assert r.json()["choices"][0]["message"]["content"] == expected_text("A", 2)


async def test_where_keys_are_required_no_model_route_or_look_alike_answers_a_caller_without_one(
    services: LlamaMan, main_port: str
) -> None:
    await services.router.load("tiny-a")
    assert services.auth.require_auth
    look_alikes = (
        "/v1/chat/completions/", "/v1//chat/completions", "/V1/chat/completions",
        "/v1/chat%2Fcompletions", "/v1/chat/completions?x=1", "/v1/chat/completions#x",
        "//v1/chat/completions", "/./v1/chat/completions", "/api/chat/", "/api/chat;x",
        "/v1/chat/completions%00", "http://127.0.0.1/v1/chat/completions",
    )  # fmt: skip
    async with httpx.AsyncClient(base_url=main_port, timeout=60, trust_env=False) as c:
        for path, body in _bodies("tiny-a").items():
            for cookie in ({}, {"cookie": "x=1"}, {"COOKIE": ""}):
                r = await c.post(path, json=body, headers=cookie)
                assert r.status_code == 401, (path, cookie, r.status_code, r.text)
    body = json.dumps(_bodies("tiny-a")["/v1/chat/completions"]).encode()
    port = int(main_port.rsplit(":", 1)[1])
    for path in look_alikes:  # sent byte for byte, as a client that normalises nothing would
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        writer.write(head.encode() + b"Content-Length: %d\r\nConnection: close\r\n\r\n%b" % (len(body), body))
        answer = await asyncio.wait_for(reader.read(), 30)
        writer.close()
        status = int(answer.split(b" ", 2)[1])
        assert status in (400, 401, 403, 404, 405), (path, answer[:300])
        assert b"choices" not in answer, path
