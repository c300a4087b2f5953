"""One node forwarding model requests to others: node-to-node trust, failover before the first byte,
a stream that breaks mid-way, and who records the exchange.

The entry node is a real LlamaMan on a real uvicorn; the nodes it forwards to are written into the
nodes table by the test and served by stand-ins, because a node that answers 5xx before its first
byte or dies mid-stream is a fault a real one will not produce on demand.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai
import pytest

from llamaman.app import LlamaMan, create_app
from llamaman.auth.sessions import SESSION_COOKIE
from llamaman.cluster.forward import NODE_HEADER, VIA_HEADER
from llamaman.core.config import Settings
from llamaman.core.exchange import Exchange
from llamaman.core.state import InstanceState
from llamaman.core.tables import Node
from llamaman.instances.launch import LaunchSettings, SamplingOverrides
from llamaman.proxy.app import ProxyServer, create_proxy_app
from llamaman.scheduling.lease import Lease
from llamaman.testing.tiny_gguf import expected_text

pytestmark = pytest.mark.auth

SECRET = "a-node-secret-of-some-length"
REMOTE_MODEL = "remote-only"


@dataclass
class StandIn:
    """A node's main port as far as a forwarded request sees it: it answers, refuses, or dies."""

    name: str
    mode: str = "ok"  # ok | fail | break
    requests: list[dict[str, Any]] = field(default_factory=list)
    server: asyncio.Server | None = None
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers = {
                k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:] if ":" in ln)
            }
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            self.requests.append({"method": method, "path": target, "headers": headers, "body": body})
            req = json.loads(body or b"{}")
            if self.mode == "fail":
                payload = b'{"error":{"message":"out of memory","code":500}}'
                writer.write(b"HTTP/1.1 500 Error\r\nContent-Type: application/json\r\n")
                writer.write(b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(payload) + payload)
            elif target.startswith("/api/"):  # Ollama's NDJSON, one line then the node dies
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n")
                writer.write(b"Transfer-Encoding: chunked\r\n\r\n")
                line = json.dumps(
                    {"model": req.get("model"), "message": {"role": "assistant", "content": "x"}}
                )
                data = line.encode() + b"\n"
                writer.write(b"%x\r\n%s\r\n" % (len(data), data))
                await writer.drain()
                await asyncio.sleep(0.05)
                writer.transport.abort()
                return
            elif req.get("stream"):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n")
                writer.write(b"Transfer-Encoding: chunked\r\n\r\n")
                delta = {"content": "x"}
                writer.write(
                    _chunked({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta}]})
                )
                await writer.drain()
                if self.mode == "break":
                    await asyncio.sleep(0.05)
                    writer.transport.abort()  # the node died mid-stream
                    return
                usage = {"prompt_tokens": 3, "completion_tokens": 1}
                final = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": usage}
                writer.write(_chunked(final) + b"0\r\n\r\n")
            else:
                answer = {
                    "object": "chat.completion", "model": req.get("model"),
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": f"from {self.name}"},
                                 "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 2},
                }  # fmt: skip
                payload = json.dumps(answer).encode()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
                writer.write(b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(payload) + payload)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def _chunked(event: dict[str, Any]) -> bytes:
    data = b"data: " + json.dumps(event).encode() + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(data), data)


@pytest.fixture
async def entry(make_settings: Callable[..., Settings]) -> AsyncIterator[tuple[LlamaMan, ProxyServer]]:
    """Node n1 with its main app on a real port; it has no copy of the remote model."""
    async with entry_node(make_settings) as box:
        yield box


@pytest.fixture
async def entry_serving(
    make_settings: Callable[..., Settings], llama_server_bin: str
) -> AsyncIterator[tuple[LlamaMan, ProxyServer]]:
    """The same entry node with a real llama-server for its own models."""
    async with entry_node(make_settings, LLAMA_SERVER_BIN=llama_server_bin) as box:
        yield box


@contextlib.asynccontextmanager
async def entry_node(
    make_settings: Callable[..., Settings], **extra: Any
) -> AsyncIterator[tuple[LlamaMan, ProxyServer]]:
    svc = LlamaMan(
        make_settings(
            LLAMAMAN_NODE_NAME="n1", LLAMAMAN_NODE_URL="http://127.0.0.1:1", LLAMAMAN_NODE_SECRET=SECRET,
            LLAMAMAN_NODE_HEARTBEAT=30, LLAMAMAN_NODE_TIMEOUT=60, **extra,
        )
    )  # fmt: skip
    await svc.start()
    # The registry's own first heartbeat writes this node's row; the test's beats come after it.
    for _ in range(1000):
        if svc.nodes.nodes():
            break
        await asyncio.sleep(0.01)
    server = ProxyServer(create_app(svc, manage_lifecycle=False), "127.0.0.1", 0)
    await server.start()
    try:
        yield svc, server
    finally:
        await server.stop()
        await svc.stop()


async def place(svc: LlamaMan, *stand_ins: StandIn, info: dict[str, dict[str, Any]] | None = None) -> None:
    """Write the stand-ins' heartbeats into the shared table and let the entry node read them."""

    def write() -> None:
        with svc.db.session() as s:
            for st in stand_ins:
                extra = (info or {}).get(st.name, {})
                row = s.get(Node, st.name) or Node(name=st.name)
                row.url, row.heartbeat_at = st.url, time.time()
                row.info = {"models_on_disk": [REMOTE_MODEL], "models_resident": [], **extra}
                s.add(row)
            s.commit()

    await asyncio.to_thread(write)
    await svc.nodes.beat()


def watch(svc: LlamaMan) -> list[Exchange]:
    seen: list[Exchange] = []
    svc.relay.add_observer(seen.append)
    return seen


async def key_of(svc: LlamaMan) -> str:
    return (await svc.auth.keys.create("client"))[1]


async def chat(server: ProxyServer, key: str | None, **extra: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    headers.update(extra.pop("headers", {}))
    body = {"model": REMOTE_MODEL, "messages": [{"role": "user", "content": "hi"}], **extra}
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        return await client.post("/v1/chat/completions", json=body, headers=headers)


# ---- forwarding and who records it ----------------------------------------------------------------


async def test_a_model_only_another_node_has_is_served_there_and_recorded_here(
    entry: tuple[LlamaMan, ProxyServer],
) -> None:
    svc, server = entry
    n2 = StandIn("n2")
    await n2.start()
    try:
        await place(svc, n2)
        seen = watch(svc)
        key = await key_of(svc)
        client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)
        reply = await client.chat.completions.create(
            model=REMOTE_MODEL, messages=[{"role": "user", "content": "hi"}]
        )
        assert reply.choices[0].message.content == "from n2"
        sent = n2.requests[0]
        assert sent["path"] == "/v1/chat/completions"
        assert sent["headers"][NODE_HEADER] == SECRET and sent["headers"][VIA_HEADER] == "n1"
        assert "authorization" not in sent["headers"]  # the caller's key stays at the entry node
        assert [(e.node, e.identity and e.identity.name, e.prompt_tokens) for e in seen] == [
            ("n2", "client", 3)
        ]
    finally:
        await n2.stop()


async def test_the_merged_model_list_names_the_node_that_has_the_model(
    entry: tuple[LlamaMan, ProxyServer],
) -> None:
    svc, server = entry
    n2 = StandIn("n2")
    await n2.start()
    try:
        await place(svc, n2)
        client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=await key_of(svc), max_retries=0)
        listed = {m.id: m for m in (await client.models.list()).data}
        assert listed[REMOTE_MODEL].owned_by == "n2"
        assert listed[REMOTE_MODEL].model_extra["nodes"] == ["n2"]
        assert listed["tiny-a"].model_extra["nodes"] == ["n1"]
        async with httpx.AsyncClient(base_url=server.url) as http:
            tags = (
                await http.get("/api/tags", headers={"Authorization": f"Bearer {await key_of(svc)}"})
            ).json()
            headers = {"Authorization": f"Bearer {await key_of(svc)}"}
            router_mode = (await http.get("/models", headers=headers)).json()["data"]
            one = (await http.get(f"/v1/models/{REMOTE_MODEL}", headers=headers)).json()
        assert [m["nodes"] for m in router_mode if m["id"] == REMOTE_MODEL] == [["n2"]]
        assert one["id"] == REMOTE_MODEL and one["status"] == {"value": "unloaded"}
        remote = [m for m in tags["models"] if m["model"] == f"{REMOTE_MODEL}:latest"]
        assert len(remote) == 1 and remote[0]["nodes"] == ["n2"] and remote[0]["details"]["format"] == "gguf"
    finally:
        await n2.stop()


async def test_a_key_limited_to_other_models_neither_sees_nor_reaches_a_remote_model(
    entry: tuple[LlamaMan, ProxyServer],
) -> None:
    svc, server = entry
    n2 = StandIn("n2")
    await n2.start()
    try:
        await place(svc, n2)
        _, limited = await svc.auth.keys.create("limited", allowed_models=["tiny-*"])
        refused = await chat(server, limited)
        assert refused.status_code == 403 and not n2.requests
        async with httpx.AsyncClient(base_url=server.url) as http:
            models = (await http.get("/v1/models", headers={"Authorization": f"Bearer {limited}"})).json()
        assert REMOTE_MODEL not in {m["id"] for m in models["data"]}
    finally:
        await n2.stop()


# ---- node-to-node trust ---------------------------------------------------------------------------


async def test_the_node_secret_stands_in_for_a_key_and_is_served_here_never_forwarded_again(
    entry: tuple[LlamaMan, ProxyServer],
) -> None:
    svc, server = entry
    n2 = StandIn("n2")
    await n2.start()
    try:
        await place(svc, n2)
        seen = watch(svc)
        forwarded = await chat(server, None, headers={NODE_HEADER: SECRET, VIA_HEADER: "n3"})
        # Accepted without a key, served here (n1 has no such model: 404), never sent on to n2.
        assert forwarded.status_code == 404 and not n2.requests
        # The node that forwarded it records and counts it, so this node does not.
        assert seen == []
    finally:
        await n2.stop()


async def test_a_wrong_secret_is_like_no_credential_at_all(entry: tuple[LlamaMan, ProxyServer]) -> None:
    _, server = entry
    for wrong in ("nope", SECRET[:-1], SECRET + "x", ""):
        answer = await chat(server, None, headers={NODE_HEADER: wrong})
        assert answer.status_code == 401, wrong


async def test_the_secret_opens_no_management_route_even_beside_the_admins_cookie(
    entry: tuple[LlamaMan, ProxyServer],
) -> None:
    svc, server = entry
    admin = await svc.auth.create_first_admin("admin", "a long password")
    cookie = f"{SESSION_COOKIE}={await svc.auth.new_session(admin)}"
    async with httpx.AsyncClient(base_url=server.url) as http:
        bare = await http.get("/api/keys", headers={NODE_HEADER: SECRET})
        assert bare.status_code == 401
        # A page on another site that knows the secret, sending the admin's cookie along.
        attack = await http.post(
            "/api/peers",
            json={"name": "evil", "base_url": "http://evil.example"},
            headers={NODE_HEADER: SECRET, "Cookie": cookie, "Origin": "http://evil.example"},
        )
        assert attack.status_code == 403
        assert (await http.get("/api/peers", headers={"Cookie": cookie})).json() == []


async def test_a_standalone_box_ignores_the_secret_header(make_settings: Callable[..., Settings]) -> None:
    svc = LlamaMan(make_settings(LLAMAMAN_NODE_SECRET=SECRET))
    await svc.start()
    try:
        app = create_app(svc, manage_lifecycle=False)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
            body = {"model": "tiny-a", "messages": [{"role": "user", "content": "hi"}]}
            answer = await http.post("/v1/chat/completions", json=body, headers={NODE_HEADER: SECRET})
        assert answer.status_code == 401
    finally:
        await svc.stop()


# ---- failover -------------------------------------------------------------------------------------


async def test_a_dead_or_failing_node_gives_way_to_the_next_before_the_client_sees_anything(
    entry: tuple[LlamaMan, ProxyServer],
) -> None:
    svc, server = entry
    dead, failing, good = StandIn("n2"), StandIn("n3", mode="fail"), StandIn("n4")
    for st in (dead, failing, good):
        await st.start()
    await dead.stop()  # its port now refuses connections
    try:
        # Most free memory first: the dead node, then the failing one, then the good one.
        memory = {"n2": {"memory": 300}, "n3": {"memory": 200}, "n4": {"memory": 100}}
        await place(svc, dead, failing, good, info=memory)
        seen = watch(svc)
        key = await key_of(svc)
        answer = await chat(server, key)
        assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"] == "from n4"
        assert len(failing.requests) == 1 and seen[-1].node == "n4"

        # Until their next heartbeat the failed nodes are skipped outright.
        again = await chat(server, key)
        assert again.status_code == 200 and len(failing.requests) == 1 and len(good.requests) == 2

        # A fresh heartbeat puts them back in rotation.
        await place(svc, failing, good, info=memory)
        await chat(server, key)
        assert len(failing.requests) == 2
    finally:
        for st in (failing, good):
            await st.stop()


@pytest.fixture
async def falling_back(
    entry_serving: tuple[LlamaMan, ProxyServer],
) -> AsyncIterator[tuple[LlamaMan, ProxyServer, StandIn]]:
    """tiny-a loaded here with forced sampling and one request in flight; n2, which answers 500,
    reports it loaded and idle, so n2 is tried first and this node is the place after it."""
    svc, server = entry_serving
    failing = StandIn("n2", mode="fail")
    await failing.start()
    held = await _busy_here_idle_there(svc, failing)
    try:
        yield svc, server, failing
    finally:
        held.release()
        await failing.stop()


async def _busy_here_idle_there(svc: LlamaMan, failing: StandIn) -> Lease:
    ls = LaunchSettings(
        model_path="tiny-a.gguf", ctx_size=512, sampling=SamplingOverrides(temperature=0, top_k=7)
    )
    m = await svc.supervisor.launch(ls)
    assert (
        await m.proc.wait_for({InstanceState.HEALTHY, InstanceState.FAILED}, timeout=30)
        is InstanceState.HEALTHY
    )
    held = await svc.router.acquire("tiny-a")
    await place(svc, failing, info={"n2": {"models_resident": ["tiny-a"], "inflight": 0}})
    return held


@pytest.mark.llama
async def test_a_request_falling_back_here_gets_this_nodes_sampling_overrides(
    falling_back: tuple[LlamaMan, ProxyServer, StandIn],
) -> None:
    svc, server, failing = falling_back
    key = await key_of(svc)
    answer = await chat(server, key, model="tiny-a", max_tokens=4, temperature=1.5, top_k=50)
    assert answer.status_code == 200
    assert answer.json()["choices"][0]["message"]["content"] == expected_text("A", 4)
    # n2 had the client's own sampling; this node's llama-server got its forced values.
    assert json.loads(failing.requests[0]["body"])["temperature"] == 1.5
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        admin = {"Authorization": f"Bearer {(await svc.auth.keys.create('ops', scope='admin'))[1]}"}
        slots = (await http.get("/slots", params={"model": "tiny-a"}, headers=admin)).json()
    assert slots[0]["params"]["temperature"] == 0 and slots[0]["params"]["top_k"] == 7


@pytest.mark.llama
async def test_an_ollama_request_falling_back_here_is_served_as_ollama_not_sent_on_as_it_came(
    falling_back: tuple[LlamaMan, ProxyServer, StandIn],
) -> None:
    svc, server, failing = falling_back
    seen = watch(svc)
    body = {"model": "tiny-a", "messages": [{"role": "user", "content": "hi"}], "stream": False,
            "options": {"num_predict": 4}}  # fmt: skip
    headers = {"Authorization": f"Bearer {await key_of(svc)}"}
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        answer = await http.post("/api/chat", json=body, headers=headers)
    assert failing.requests[0]["path"] == "/api/chat"
    # Ollama's shape, made here from this node's llama-server: not its OpenAI answer passed on.
    assert answer.status_code == 200 and answer.json()["message"]["content"] == expected_text("A", 4)
    assert answer.json()["done"] is True
    assert seen[-1].node is None and seen[-1].completion_tokens == 4


async def test_when_every_node_fails_the_client_gets_a_502_in_its_dialect(
    entry: tuple[LlamaMan, ProxyServer],
) -> None:
    svc, server = entry
    failing = StandIn("n2", mode="fail")
    await failing.start()
    try:
        await place(svc, failing)
        answer = await chat(server, await key_of(svc))
        # The last place's own answer comes back: a 5xx the client can read.
        assert answer.status_code == 500 and "out of memory" in answer.json()["error"]["message"]
    finally:
        await failing.stop()


async def test_a_node_dying_mid_stream_ends_the_clients_stream_with_an_error_at_once(
    entry: tuple[LlamaMan, ProxyServer],
) -> None:
    svc, server = entry
    dying = StandIn("n2", mode="break")
    await dying.start()
    try:
        await place(svc, dying)
        seen = watch(svc)
        body = {"model": REMOTE_MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
        headers = {"Authorization": f"Bearer {await key_of(svc)}"}
        started = time.monotonic()
        async with (
            httpx.AsyncClient(base_url=server.url, timeout=30) as http,
            http.stream("POST", "/v1/chat/completions", json=body, headers=headers) as answer,
        ):
            events = [line async for line in answer.aiter_lines() if line.startswith("data: ")]
        assert time.monotonic() - started < 5
        assert json.loads(events[0][6:])["choices"][0]["delta"]["content"] == "x"
        error = json.loads(events[-1][6:])["error"]
        assert "node 'n2'" in error["message"] and "stopped mid-stream" in error["message"]
        assert seen[-1].error and seen[-1].node == "n2"
    finally:
        await dying.stop()


async def test_an_ollama_stream_from_a_dying_node_ends_with_an_ollama_error_line(
    entry: tuple[LlamaMan, ProxyServer],
) -> None:
    svc, server = entry
    dying = StandIn("n2", mode="break")
    await dying.start()
    try:
        await place(svc, dying)
        body = {"model": REMOTE_MODEL, "messages": [{"role": "user", "content": "hi"}]}
        headers = {"Authorization": f"Bearer {await key_of(svc)}"}
        async with (
            httpx.AsyncClient(base_url=server.url, timeout=30) as http,
            http.stream("POST", "/api/chat", json=body, headers=headers) as answer,
        ):
            lines = [json.loads(line) async for line in answer.aiter_lines() if line.strip()]
        # The request went as sent, to the same Ollama route on the other node.
        assert dying.requests[0]["path"] == "/api/chat" and json.loads(dying.requests[0]["body"]) == body
        assert lines[0]["message"]["content"] == "x"
        assert "node 'n2'" in lines[-1]["error"] and "stopped mid-stream" in lines[-1]["error"]
    finally:
        await dying.stop()


async def test_the_proxy_port_trusts_the_secret_as_the_main_port_does(
    entry: tuple[LlamaMan, ProxyServer],
) -> None:
    svc, _ = entry
    app = create_proxy_app(svc)
    body = {"model": REMOTE_MODEL, "messages": [{"role": "user", "content": "hi"}]}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        trusted = await http.post("/v1/chat/completions", json=body, headers={NODE_HEADER: SECRET})
        assert trusted.status_code == 404  # accepted without a key, served (not found) here
        wrong = await http.post("/api/chat", json=body, headers={NODE_HEADER: SECRET.upper()})
        assert wrong.status_code == 401 and "API key" in wrong.json()["error"]
        # Model management stays an admin's business whatever the secret says.
        pull = await http.post("/api/pull", json={"model": "x"}, headers={NODE_HEADER: SECRET})
        assert pull.status_code == 401
