"""Faults around the fast lane, in front of a real llama-server: the lane decides from the HTTP
parser's callbacks, where an exception would drop the connection with nothing said (the full path
takes the request instead, and whatever the lane had taken is given back); and a port stopping with
an answer still running past its grace tells the client so instead of hanging up on it."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from llamaman.app import LlamaMan
from llamaman.core.exchange import Exchange
from llamaman.testing.tiny_gguf import expected_text
from llamaman.upstream.inflight import CUT_OFF
from tests.proxy.lane_ports import Ports, client

pytestmark = pytest.mark.llama

HI = [{"role": "user", "content": "hi"}]


def chat(n: int) -> dict[str, Any]:
    return {"model": "tiny-a", "messages": HI, "max_tokens": n}


# Each step of the lane's decision, in its order, failing once it has done its work (a place taken,
# the request written to llama-server): except the place itself, which fails before it is taken.
STEPS = [("admit", True), ("ready", True), ("lease", False), ("send_now", True), ("exchange", True)]


@pytest.mark.parametrize(("step", "after_work"), STEPS, ids=[s for s, _ in STEPS])
async def test_a_fault_in_the_lanes_decision_leaves_the_request_to_the_full_path_with_nothing_held(
    services: LlamaMan, proxy_pair: Ports, caplog: pytest.LogCaptureFixture, step: str, after_work: bool
) -> None:
    m = await services.router.load("tiny-a")
    _, key = await services.auth.keys.create("faults")
    # A request the full way first leaves a kept connection to llama-server: the lane then writes its
    # request from the parser's callback, so a step that fails after that has a written request to drop.
    async with client(proxy_pair.full.url, {"Authorization": f"Bearer {key}"}) as c:
        assert (await c.post("/v1/chat/completions", json=chat(2))).status_code == 200
    lane: Any = proxy_pair.lane.lane
    real = getattr(lane, step)
    faults = 0

    def faulty(*args: Any) -> Any:
        nonlocal faults
        if faults == 0:
            faults += 1
            if after_work:
                real(*args)
            raise RuntimeError("a fault of the lane's own")
        return real(*args)

    setattr(lane, step, faulty)
    with caplog.at_level(logging.ERROR, logger="llamaman.proxy.fast_protocol"):
        async with client(proxy_pair.lane.url, {"Authorization": f"Bearer {key}"}) as c:
            first = await c.post("/v1/chat/completions", json=chat(3))
            # The same connection goes on: the next request takes the lane again.
            second = await c.post("/v1/chat/completions", json=chat(4))
    assert first.status_code == 200, first.text
    assert first.json()["choices"][0]["message"]["content"] == expected_text("A", 3)
    assert second.json()["choices"][0]["message"]["content"] == expected_text("A", 4)
    assert faults == 1 and proxy_pair.taken == 1  # the first went the full way, the second the lane's
    assert "the fast lane failed" in caplog.text
    # Nothing the failed step took is still held: no place, no request in flight, and no request
    # written to llama-server that nobody will read or drop.
    assert services.router.slot(m).inflight == 0 and len(services.relay.inflight) == 0
    assert services.relay.upstream.waiting(m.base_url) == 0


async def test_an_answer_still_running_when_a_stopping_ports_grace_ends_is_told_503_and_gives_its_place_back(
    services: LlamaMan, proxy_pair: Ports, caplog: pytest.LogCaptureFixture
) -> None:
    # A generation far longer than the grace, however fast the machine.
    await services.presets.put("tiny-a.gguf", {"ctx_size": 32768})
    m = await services.router.load("tiny-a")
    seen: list[Exchange] = []
    services.relay.add_observer(seen.append)
    _, key = await services.auth.keys.create("cut-off")
    port = proxy_pair.lane
    with caplog.at_level(logging.WARNING, logger="llamaman.proxy.app"):
        async with client(port.url, {"Authorization": f"Bearer {key}"}) as c:
            asking = asyncio.create_task(c.post("/v1/chat/completions", json=chat(30000)))
            while not len(services.relay.inflight):
                await asyncio.sleep(0.005)
            port.server.config.timeout_graceful_shutdown = 0.2
            await port.stop()
            r = await asking
    assert r.status_code == 503 and r.json()["error"]["message"] == CUT_OFF
    assert "cut off" in caplog.text
    # Recorded as cut off, listed in flight no longer, its place free. (llama-server notices the
    # closed connection in its own time: seconds, for an answer that comes whole.)
    assert [(ex.status, ex.error) for ex in seen] == [(503, CUT_OFF)]
    assert services.router.slot(m).inflight == 0 and len(services.relay.inflight) == 0


FULL_PATH = [
    ("/v1/chat/completions", {"model": "tiny-a", "messages": HI, "max_tokens": 30000}),
    ("/api/chat", {"model": "tiny-a", "messages": HI, "stream": False, "options": {"num_predict": 30000}}),
]


@pytest.mark.parametrize(("path", "body"), FULL_PATH, ids=["openai", "ollama"])
async def test_the_full_path_tells_a_cut_off_answer_why_in_its_clients_dialect(
    services: LlamaMan, proxy_pair: Ports, path: str, body: dict[str, Any]
) -> None:
    await services.presets.put("tiny-a.gguf", {"ctx_size": 32768})
    m = await services.router.load("tiny-a")
    seen: list[Exchange] = []
    services.relay.add_observer(seen.append)
    port = proxy_pair.full
    async with client(port.url) as c:
        asking = asyncio.create_task(c.post(path, json=body))
        while not len(services.relay.inflight):
            await asyncio.sleep(0.005)
        port.server.config.timeout_graceful_shutdown = 0.2
        await port.stop()
        r = await asking
    assert r.status_code == 503
    said = r.json()["error"]
    assert (said if path == "/api/chat" else said["message"]) == CUT_OFF
    assert [(ex.status, ex.error) for ex in seen] == [(503, CUT_OFF)]
    assert services.router.slot(m).inflight == 0 and len(services.relay.inflight) == 0


async def test_a_fault_writing_the_answer_from_llama_servers_callback_leaves_it_to_the_task(
    services: LlamaMan, proxy_pair: Ports, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llamaman.proxy import fast_protocol

    await services.router.load("tiny-a")
    real = fast_protocol.answered_whole
    faults = 0

    def faulty(*args: Any) -> Any:
        nonlocal faults
        faults += 1
        raise RuntimeError("a fault of the lane's own")

    seen: list[Exchange] = []
    services.relay.add_observer(seen.append)
    _, key = await services.auth.keys.create("faults")
    with caplog.at_level(logging.ERROR, logger="llamaman.proxy.fast_protocol"):
        async with client(proxy_pair.lane.url, {"Authorization": f"Bearer {key}"}) as c:
            await c.post("/v1/chat/completions", json=chat(2))  # a kept connection to llama-server
            monkeypatch.setattr(fast_protocol, "answered_whole", faulty)
            first = await c.post("/v1/chat/completions", json=chat(3))
            monkeypatch.setattr(fast_protocol, "answered_whole", real)
            second = await c.post("/v1/chat/completions", json=chat(4))
    assert faults == 1 and "its task answers it" in caplog.text
    assert first.json()["choices"][0]["message"]["content"] == expected_text("A", 3)
    assert second.json()["choices"][0]["message"]["content"] == expected_text("A", 4)
    assert proxy_pair.taken == 3 and [ex.status for ex in seen] == [200, 200, 200]
