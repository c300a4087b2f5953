"""Static peers: endpoints that are not LlamaMan, kept through /api/peers, polled for their models,
listed beside ours and routed to by model name, with their key and with failover between them.

The peer is ``bench/fake_upstream.py`` (an OpenAI-compatible server that answers the alphabet),
listening on loopback; the box is a real LlamaMan with no node name: peers need no cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import ollama
import openai
import pytest

from bench import fake_upstream
from llamaman.app import LlamaMan, create_app
from llamaman.core.config import Settings
from llamaman.proxy.app import ProxyServer
from llamaman.testing.netports import free_block

PEER_KEY = "peer-secret-key"


@contextlib.asynccontextmanager
async def fake_peer() -> AsyncIterator[tuple[str, asyncio.Task[None]]]:
    """A fake upstream on a free port that wants ``PEER_KEY``; the task serves it until cancelled."""
    port = free_block(1, 39000)
    task = asyncio.create_task(fake_upstream.serve("127.0.0.1", port))
    async with httpx.AsyncClient() as http:
        for _ in range(100):
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get(f"http://127.0.0.1:{port}/health")).status_code == 200:
                    break
            await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture(autouse=True)
def _peer_wants_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fake_upstream, "API_KEY", PEER_KEY)


@pytest.fixture
async def box(make_settings: Callable[..., Settings]) -> AsyncIterator[tuple[LlamaMan, ProxyServer]]:
    svc = LlamaMan(make_settings())
    await svc.start()
    server = ProxyServer(create_app(svc, manage_lifecycle=False), "127.0.0.1", 0)
    await server.start()
    try:
        yield svc, server
    finally:
        await server.stop()
        await svc.stop()


async def admin(svc: LlamaMan, server: ProxyServer) -> httpx.AsyncClient:
    _, key = await svc.auth.keys.create("admin", scope="admin")
    return httpx.AsyncClient(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=30)


async def test_peers_are_kept_validated_and_their_key_never_shown(box: tuple[LlamaMan, ProxyServer]) -> None:
    svc, server = box
    async with await admin(svc, server) as api:
        peer = {"name": "swap", "base_url": "http://10.0.0.7:8080/v1/", "api_key": "s3cret"}
        made = await api.post("/api/peers", json={**peer, "model_filter": "qwen*, llama*"})
        assert made.status_code == 201
        shown = made.json()
        assert shown["base_url"] == "http://10.0.0.7:8080" and shown["model_filter"] == "qwen*,llama*"
        assert shown["has_api_key"] is True and "s3cret" not in made.text
        listed = (await api.get("/api/peers")).json()
        assert [p["name"] for p in listed] == ["swap"] and "s3cret" not in str(listed)

        assert (
            await api.post("/api/peers", json={"name": "swap", "base_url": "http://x:1"})
        ).status_code == 409
        changed = await api.put("/api/peers/swap", json={"api_key": "", "enabled": False})
        assert changed.json()["has_api_key"] is False and changed.json()["enabled"] is False
        assert (await api.delete("/api/peers/swap")).status_code == 200
        assert (await api.get("/api/peers/swap")).status_code == 404
        assert (await api.put("/api/peers/swap", json={"enabled": True})).status_code == 404


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"name": "bad name", "base_url": "http://x:1"}, "name"),
        ({"name": "-x", "base_url": "http://x:1"}, "name"),
        ({"name": "p", "base_url": "ftp://x"}, "http://"),
        ({"name": "p", "base_url": "http://"}, "http://"),
        ({"name": "p", "base_url": "http://x:99999"}, "port"),
        ({"name": "p", "base_url": "http://x:1", "model_filter": "qwen 7b"}, "fnmatch"),
        ({"name": "p", "base_url": "http://x:1", "model_filter": "qwen[7"}, "fnmatch"),
        ({"name": "p", "base_url": "http://x:1", "key": "typo"}, "key"),
    ],
)
async def test_a_peer_that_cannot_work_is_refused_with_a_422_that_says_why(
    box: tuple[LlamaMan, ProxyServer], body: dict[str, str], says: str
) -> None:
    svc, server = box
    async with await admin(svc, server) as api:
        answer = await api.post("/api/peers", json=body)
        assert answer.status_code == 422
        assert says in answer.json()["detail"]
        assert (await api.get("/api/peers")).json() == []


async def test_peers_are_for_admins_only(box: tuple[LlamaMan, ProxyServer]) -> None:
    svc, server = box
    _, inference = await svc.auth.keys.create("client")
    async with httpx.AsyncClient(base_url=server.url) as http:
        assert (await http.get("/api/peers")).status_code == 401
        assert (
            await http.get("/api/peers", headers={"Authorization": f"Bearer {inference}"})
        ).status_code == 403


async def test_a_peer_is_listed_and_reached_by_model_name_with_its_key(
    box: tuple[LlamaMan, ProxyServer],
) -> None:
    svc, server = box
    async with fake_peer() as (url, _), await admin(svc, server) as api:
        await api.post("/api/peers", json={"name": "swap", "base_url": url, "api_key": PEER_KEY})
        await svc.peers.poll_all()
        seen: list = []
        svc.relay.add_observer(seen.append)
        client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
        listed = {m.id: m for m in (await client.models.list()).data}
        assert listed["fake"].model_extra["peers"] == ["swap"] and listed["fake"].owned_by == "swap"
        reply = await client.chat.completions.create(
            model="fake", messages=[{"role": "user", "content": "hi"}], max_tokens=5
        )
        assert reply.choices[0].message.content == "abcde"
        assert seen[-1].node == "swap" and seen[-1].completion_tokens == 5
        stream = await client.chat.completions.create(
            model="fake", messages=[{"role": "user", "content": "hi"}], max_tokens=3, stream=True
        )
        assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices]) == "abc"


async def test_a_peer_with_a_wrong_key_or_filtered_model_is_not_used(
    box: tuple[LlamaMan, ProxyServer],
) -> None:
    svc, server = box
    async with fake_peer() as (url, _), await admin(svc, server) as api:
        await api.post("/api/peers", json={"name": "nokey", "base_url": url, "api_key": "wrong"})
        filtered = {"name": "filtered", "base_url": url, "api_key": PEER_KEY, "model_filter": "qwen*"}
        await api.post("/api/peers", json=filtered)
        await svc.peers.poll_all()
        peers = {p["name"]: p for p in (await api.get("/api/peers")).json()}
        # The failed poll is kept on the peer, not raised.
        assert peers["nokey"]["ok"] is False and "401" in peers["nokey"]["error"]
        assert peers["filtered"]["ok"] is True and peers["filtered"]["models"] == []
        body = {"model": "fake", "messages": [{"role": "user", "content": "hi"}]}
        assert (await api.post("/v1/chat/completions", json=body)).status_code == 404


async def test_a_poll_that_asked_before_a_request_failed_does_not_clear_the_failure(
    box: tuple[LlamaMan, ProxyServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A poll in flight when the peer goes away may still bring back its last good answer: the
    request that failed after it asked is the newer word, and the peer stays out until a poll
    asked after the failure finds it answering."""
    svc, server = box
    async with fake_peer() as (url, _), await admin(svc, server) as api:
        await api.post("/api/peers", json={"name": "late", "base_url": url, "api_key": PEER_KEY})
        await svc.peers.poll_all()
        [view] = [v for v in svc.peers.views() if v.row.name == "late"]
        real_get = svc.peers.http.get
        asked, read = asyncio.Event(), asyncio.Event()

        async def late_get(*args: Any, **kwargs: Any) -> httpx.Response:
            r = await real_get(*args, **kwargs)  # the peer answered: it was up when asked
            asked.set()
            await read.wait()  # ...and the answer is taken in only after a request failed on it
            return r

        monkeypatch.setattr(svc.peers.http, "get", late_get)
        polling = asyncio.create_task(svc.peers.poll(view))
        await asyncio.wait_for(asked.wait(), 10)
        svc.peers.mark_failed("late", "cannot connect")
        read.set()
        await polling
        assert view.status.error == "cannot connect"
        assert "late" not in [p.name for p in svc.peers.states()]
        monkeypatch.setattr(svc.peers.http, "get", real_get)
        await svc.peers.poll(view)  # asked after the failure, and answered: back in rotation
        assert view.status.error is None and [p.name for p in svc.peers.states()] == ["late"]


async def test_a_peer_that_went_away_gives_way_to_the_next_peer(box: tuple[LlamaMan, ProxyServer]) -> None:
    svc, server = box
    async with (
        fake_peer() as (first, first_task),
        fake_peer() as (second, _),
        await admin(svc, server) as api,
    ):
        await api.post("/api/peers", json={"name": "a-first", "base_url": first, "api_key": PEER_KEY})
        await api.post("/api/peers", json={"name": "b-second", "base_url": second, "api_key": PEER_KEY})
        await svc.peers.poll_all()
        first_task.cancel()  # gone between two polls
        with contextlib.suppress(asyncio.CancelledError):
            await first_task
        seen: list = []
        svc.relay.add_observer(seen.append)
        body = {"model": "fake", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        answer = await api.post("/v1/chat/completions", json=body)
        assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"] == "ab"
        assert seen[-1].node == "b-second"
        peers = {p["name"]: p for p in (await api.get("/api/peers")).json()}
        assert peers["a-first"]["error"]  # why it was skipped, on its status


@contextlib.asynccontextmanager
async def ollama_to_peer(
    box: tuple[LlamaMan, ProxyServer],
) -> AsyncIterator[tuple[ollama.AsyncClient, httpx.AsyncClient, list[Any]]]:
    """The official Ollama client on the box, a peer "swap" added, and what the relay records."""
    svc, server = box
    async with fake_peer() as (url, _), await admin(svc, server) as api:
        await api.post("/api/peers", json={"name": "swap", "base_url": url, "api_key": PEER_KEY})
        await svc.peers.poll_all()
        seen: list[Any] = []
        svc.relay.add_observer(seen.append)
        yield ollama.AsyncClient(host=server.url), api, seen


async def test_the_official_ollama_client_lists_and_chats_with_a_peer_model(
    box: tuple[LlamaMan, ProxyServer],
) -> None:
    async with ollama_to_peer(box) as (client, _, seen):
        tags = {m.model: m for m in (await client.list()).models}
        assert "fake:latest" in tags and "tiny-a:latest" in tags
        reply = await client.chat(
            model="fake", messages=[{"role": "user", "content": "hi"}], options={"num_predict": 4}
        )
        assert reply.message.content == "abcd" and reply.done
        assert seen[-1].node == "swap" and seen[-1].completion_tokens == 4
        parts = [
            part.message.content
            async for part in await client.chat(
                model="fake",
                messages=[{"role": "user", "content": "hi"}],
                options={"num_predict": 3},
                stream=True,
            )
        ]
        assert "".join(parts) == "abc"
        assert seen[-1].node == "swap" and seen[-1].stream


async def test_the_official_ollama_client_generates_and_embeds_with_a_peer_model(
    box: tuple[LlamaMan, ProxyServer],
) -> None:
    async with ollama_to_peer(box) as (client, api, seen):
        reply = await client.generate(model="fake", prompt="hi", options={"num_predict": 4})
        assert reply.response == "abcd" and reply.done and reply.eval_count == 4
        assert (seen[-1].node, seen[-1].endpoint, seen[-1].completion_tokens) == ("swap", "/api/generate", 4)
        parts = [
            p.response
            async for p in await client.generate(
                model="fake", prompt="hi", options={"num_predict": 3}, stream=True
            )
        ]
        assert "".join(parts) == "abc" and seen[-1].stream
        loaded = await client.generate(model="fake")  # Ollama's "load it": nothing reaches the peer
        assert loaded.done_reason == "load" and loaded.response == ""
        unloaded = await client.chat(model="fake", messages=[], keep_alive=0)
        assert unloaded.done_reason == "unload" and unloaded.message.content == ""
        bad = await api.post("/api/generate", json={"model": "fake", "keep_alive": "soon"})
        assert bad.status_code == 400 and "keep_alive" in bad.json()["error"]
        embedded = await client.embed(model="fake", input=["one", "three"])
        assert [v[0] for v in embedded.embeddings] == [3.0, 5.0]
        assert (seen[-1].node, seen[-1].endpoint, seen[-1].prompt_tokens) == ("swap", "/api/embed", 8)
        legacy = await client.embeddings(model="fake", prompt="four")
        assert legacy.embedding[0] == 4.0
        # A raw prompt needs llama-server's own completion route, which a peer need not have.
        raw = await api.post("/api/generate", json={"model": "fake", "prompt": "hi", "raw": True})
        assert raw.status_code == 404 and "fake" in raw.json()["error"]
        bad = await api.post("/api/embed", json={"model": "fake", "input": 5})
        assert bad.status_code == 400 and "input" in bad.json()["error"]
