"""Ollama's generate and embedding routes now reach static peers: a key limited to other models must
not reach a peer's model through them, in any spelling of its name, and a raw prompt a peer cannot
serve is never sent there however ``raw`` is spelled."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from llamaman.app import LlamaMan
from llamaman.proxy.app import ProxyServer
from tests.cluster.test_peers import PEER_KEY, admin, box, fake_peer  # noqa: F401 (fixture)

pytestmark = pytest.mark.auth


@contextlib.asynccontextmanager
async def with_peer(svc: LlamaMan, server: ProxyServer) -> AsyncIterator[tuple[httpx.AsyncClient, list[Any]]]:
    """An admin client on a box that knows the peer ``swap`` (model ``fake``), and the exchanges it
    relays from now on."""
    async with fake_peer() as (url, _), await admin(svc, server) as api:
        await api.post("/api/peers", json={"name": "swap", "base_url": url, "api_key": PEER_KEY})
        await svc.peers.poll_all()
        seen: list[Any] = []
        svc.relay.add_observer(seen.append)
        yield api, seen


ROUTES = [
    ("/api/generate", {"prompt": "hi"}),
    ("/api/chat", {"messages": [{"role": "user", "content": "hi"}]}),
    ("/api/embed", {"input": "hi"}),
    ("/api/embeddings", {"prompt": "hi"}),
]


async def test_a_key_limited_to_other_models_reaches_no_peer_model_by_any_ollama_route(
    box: tuple[LlamaMan, ProxyServer],  # noqa: F811
) -> None:
    svc, server = box
    async with with_peer(svc, server) as (api, seen):
        _, limited = await svc.auth.keys.create("limited", allowed_models=["tiny-a"])
        headers = {"Authorization": f"Bearer {limited}"}
        for path, extra in ROUTES:
            for name in ("fake", "FAKE", "fake:latest", " fake "):
                r = await api.post(path, json={"model": name, "stream": False, **extra}, headers=headers)
                assert r.status_code in (403, 404), (path, name, r.status_code, r.text)
        assert not [ex for ex in seen if ex.node == "swap"]  # nothing reached the peer
        # The admin key reaches it by the same routes: the refusals above were the key's limit.
        ok = await api.post("/api/embed", json={"model": "fake", "input": "hi"})
        assert ok.status_code == 200 and seen[-1].node == "swap"


async def test_a_raw_prompt_is_never_sent_to_a_peer_however_raw_is_spelled(
    box: tuple[LlamaMan, ProxyServer],  # noqa: F811
) -> None:
    svc, server = box
    async with with_peer(svc, server) as (api, seen):
        for raw in (True, 1, "true", "yes"):
            r = await api.post(
                "/api/generate", json={"model": "fake", "prompt": "hi", "raw": raw, "stream": False}
            )
            assert r.status_code in (400, 404), (raw, r.status_code, r.text)
        suffixed = {"model": "fake", "prompt": "def f(", "suffix": ")", "stream": False}
        assert (await api.post("/api/generate", json=suffixed)).status_code in (400, 404)
        assert not [ex for ex in seen if ex.node == "swap"]
