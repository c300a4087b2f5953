"""The in-flight list and its cancel button, and clients hanging up, against real llama-servers."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest

from llamaman.app import LlamaMan
from llamaman.core.exchange import Exchange
from llamaman.core.state import InstanceState
from llamaman.instances.launch import LaunchSettings
from llamaman.instances.supervisor import ManagedInstance
from llamaman.proxy.app import ProxyServer
from tests.helpers import api_client

S = InstanceState
HELLO = [{"role": "user", "content": "hi"}]


# Generations these tests cancel or hang up on must still run when the test gets to them, however
# busy the machine: far more tokens than the test could wait for. A stream its client stops reading
# then stalls once the socket buffers between them are full (a few MB), long before its end.
CTX = 65536
LONG = 60000
SHORT = {"options": {"num_predict": 8}}


async def launch(services: LlamaMan, **kw: Any) -> ManagedInstance:
    m = await services.supervisor.launch(LaunchSettings(model_path="tiny-a.gguf", ctx_size=CTX, **kw))
    assert await m.proc.wait_for({S.HEALTHY, S.FAILED}, timeout=30) == S.HEALTHY
    return m


async def processing(services: LlamaMan, m: ManagedInstance) -> bool:
    slots = (await services.http.get(f"{m.base_url}/slots", headers=m.proc.auth_headers)).json()
    return any(s.get("is_processing") for s in slots)


async def eventually(check: Any, what: str, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} not reached within {timeout} s"
        await asyncio.sleep(0.05)


async def listed(api: httpx.AsyncClient, *states: str) -> Any:
    """The in-flight list once it holds requests in exactly these states, oldest first."""

    seen: list[Any] = [None]

    async def check() -> tuple[list[dict[str, Any]]] | None:
        rows = seen[0] = (await api.get("/api/inflight")).json()
        return (rows,) if tuple(r["state"] for r in rows) == states else None

    try:
        [rows] = await eventually(check, f"requests in flight: {states}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the list last held {seen[0]}") from None
    return rows


@pytest.fixture
async def proxied(proxy: ProxyServer) -> Any:
    async with httpx.AsyncClient(base_url=proxy.url, timeout=60, trust_env=False) as c:
        yield c


async def test_a_queued_request_leaves_the_queue_and_a_running_stream_ends_when_an_admin_cancels(
    services: LlamaMan, proxied: httpx.AsyncClient
) -> None:
    m = await launch(services, max_concurrent=1, max_queue_depth=4)
    body = {"model": "tiny-a", "messages": HELLO, "max_tokens": LONG, "stream": True}
    async with api_client(services) as api, proxied.stream("POST", "/v1/chat/completions", json=body) as run:
        lines = run.aiter_lines()
        async for line in lines:
            if line.startswith("data: {"):
                break
        waiting = asyncio.create_task(
            proxied.post("/api/chat", json={"model": "tiny-a", "messages": HELLO, "stream": False, **SHORT})
        )
        running, queued = await listed(api, "running", "queued")
        assert running["model"] == queued["model"] == "tiny-a"
        assert running["stream"] is True and running["tokens"] >= 1
        assert running["age_s"] >= queued["age_s"] >= 0

        r = await api.delete(f"/api/inflight/{queued['id']}")
        assert r.status_code == 200 and r.json()["cancelled"] == "cancelled by an administrator"
        refused = await asyncio.wait_for(waiting, 10)
        assert refused.status_code == 409
        assert refused.json() == {"error": "cancelled by an administrator"}  # Ollama's dialect

        assert (await api.delete(f"/api/inflight/{running['id']}")).status_code == 200
        rest = [line async for line in lines if line.startswith("data: ")]
        assert rest, "the stream ended without a word"
        assert json.loads(rest[-1][6:])["error"]["message"] == "cancelled by an administrator"
        await listed(api)
    assert services.router.slot(m).inflight == 0
    await eventually(lambda: _not(processing(services, m)), "llama-server idle", timeout=3)


async def _not(check: Any) -> bool:
    return not await check


async def test_cancelling_a_running_answer_that_comes_whole_answers_409_and_frees_the_slot(
    services: LlamaMan, proxied: httpx.AsyncClient
) -> None:
    m = await launch(services)
    body = {"model": "tiny-a", "messages": HELLO, "max_tokens": LONG}
    async with api_client(services) as api:
        asking = asyncio.create_task(proxied.post("/v1/chat/completions", json=body))
        [row] = await listed(api, "running")
        assert row["stream"] is False
        assert (await api.delete(f"/api/inflight/{row['id']}")).status_code == 200
        answer = await asyncio.wait_for(asking, 10)
        assert answer.status_code == 409
        assert answer.json()["error"]["message"] == "cancelled by an administrator"
        await listed(api)
        # A second cancel finds nothing to cancel, and says so.
        gone = await api.delete(f"/api/inflight/{row['id']}")
        assert gone.status_code == 404 and row["id"] in gone.json()["detail"]
    assert services.router.slot(m).inflight == 0


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/chat"])
async def test_a_client_hanging_up_on_a_generation_that_comes_whole_gives_its_place_back_at_once(
    services: LlamaMan, proxy: ProxyServer, path: str
) -> None:
    m = await launch(services)
    seen: list[Exchange] = []
    services.relay.add_observer(seen.append)
    body: dict[str, Any] = {"model": "tiny-a", "messages": HELLO, "stream": False}
    body |= {"options": {"num_predict": LONG}} if path == "/api/chat" else {"max_tokens": LONG}
    async with httpx.AsyncClient(base_url=proxy.url, timeout=60, trust_env=False) as c:
        asking = asyncio.create_task(c.post(path, json=body))
        await eventually(lambda: processing(services, m), "llama-server generating")
        assert services.router.slot(m).inflight == 1
        asking.cancel()  # the client hangs up: its connection closes
        hung_up = time.monotonic()
    with pytest.raises(asyncio.CancelledError):
        await asking
    # Seconds before the generation would end: the request leaves LlamaMan's books (its lease, the
    # in-flight list) and its upstream connection is closed, as soon as the client is gone.
    await eventually(lambda: _idle(services, m), "slot released", timeout=1)
    assert time.monotonic() - hung_up < 1
    assert len(services.relay.inflight) == 0
    [ex] = seen
    assert (ex.status, ex.error) == (499, "the client disconnected")


async def _idle(services: LlamaMan, m: ManagedInstance) -> bool:
    return services.router.slot(m).inflight == 0
