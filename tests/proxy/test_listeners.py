"""Per-instance listener ports in front of real llama-servers."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from typing import Any

import httpx
import pytest

from llamaman.app import LlamaMan
from llamaman.core.exchange import Exchange
from llamaman.core.state import InstanceState
from llamaman.instances.launch import LaunchSettings, SamplingOverrides
from llamaman.instances.supervisor import ManagedInstance

S = InstanceState


async def launch(services: LlamaMan, **kw: Any) -> ManagedInstance:
    settings = {"model_path": "tiny-a.gguf", "ctx_size": 2048, **kw}
    m = await services.supervisor.launch(LaunchSettings(**settings))
    assert await m.proc.wait_for({S.HEALTHY, S.FAILED}, timeout=30) == S.HEALTHY
    return m


def chat_body(model: str | None = "tiny-a", max_tokens: int = 6, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": max_tokens,
        **extra,
    }
    if model is not None:
        body["model"] = model
    return body


async def test_llama_server_listens_internally_and_the_listener_passes_through(services: LlamaMan) -> None:
    m = await launch(services)
    assert m.record.internal_port is not None and m.upstream_port != m.record.port
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{m.record.port}", timeout=30) as c:
        r = await c.post("/v1/chat/completions", json=chat_body())
        assert r.status_code == 200
        assert r.json()["choices"][0]["message"]["content"].startswith("abcdef")
        r = await c.post("/v1/chat/completions", json=chat_body(model=None))
        assert r.status_code == 200
        r = await c.get("/v1/models")
        assert r.status_code == 200 and r.json()["data"]


async def test_mismatched_model_gets_404_without_waking_a_sleeping_instance(services: LlamaMan) -> None:
    m = await launch(services)
    await services.supervisor.sleep(m.id)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{m.record.port}", timeout=30) as c:
        r = await c.post("/v1/chat/completions", json=chat_body(model="tiny-b"))
        assert r.status_code == 404
        assert "tiny-b" in r.json()["error"]["message"]
        assert m.state == S.SLEEPING
        r = await c.get("/health")
        assert r.status_code == 200 and m.state == S.SLEEPING
        # A prefix of the model's name is accepted, and wakes it.
        r = await c.post("/v1/chat/completions", json=chat_body(model="tiny"))
        assert r.status_code == 200
        assert r.json()["choices"][0]["message"]["content"].startswith("abc")
        assert m.state == S.HEALTHY


async def test_sampling_overrides_are_forced_onto_requests(services: LlamaMan) -> None:
    m = await launch(services, sampling=SamplingOverrides(temperature=0.0, top_k=7))
    async with httpx.AsyncClient(timeout=30) as c:
        r = await c.post(
            f"http://127.0.0.1:{m.record.port}/v1/chat/completions", json=chat_body(temperature=1.7, top_k=40)
        )
        assert r.status_code == 200
        slots = (await c.get(f"{m.base_url}/slots", headers=m.proc.auth_headers)).json()
    params = slots[0]["params"]
    assert params["temperature"] == pytest.approx(0.0)
    assert params["top_k"] == 7


async def test_gate_serves_three_and_refuses_seven_then_counters_return_to_zero(services: LlamaMan) -> None:
    # The answers are long so that all ten arrive while the first is served. One thread: a thread
    # pool as wide as the machine slows to a crawl when anything else wants a core (beside a CPU hog
    # on two cores, three 400-token answers took 2 to 48 s, and once over a minute; with one thread,
    # three of 1,200 tokens take about 2 s, with the hog or without).
    m = await launch(services, max_concurrent=1, max_queue_depth=2, threads=1)
    async with httpx.AsyncClient(timeout=60) as c:

        async def one() -> int:
            r = await c.post(
                f"http://127.0.0.1:{m.record.port}/v1/chat/completions", json=chat_body(max_tokens=1200)
            )
            if r.status_code == 429:
                assert int(r.headers["Retry-After"]) >= 1
            return r.status_code

        statuses = await asyncio.gather(*(one() for _ in range(10)))
    assert sorted(statuses) == [200] * 3 + [429] * 7
    counters = services.router.counters(m)
    assert counters["active_requests"] == 0 and counters["queued_requests"] == 0 and counters["inflight"] == 0
    view = services.instance_extra(m)
    assert view["queued_requests"] == 0


async def test_client_disconnect_mid_stream_frees_the_slot_and_closes_upstream(services: LlamaMan) -> None:
    # A generation as long as llama-server makes: 1,500 tokens stream in about a second here, and on
    # a loaded machine all of them once reached LlamaMan, its usage with them, before this process
    # got the core back to read the first. The xllamacpp build stops near 4,100 tokens whatever is
    # asked (4,073 for 30,000 at this context, in 4.5 s), which leaves four times the room.
    m = await launch(services, ctx_size=32768)
    seen: list[Exchange] = []
    services.relay.add_observer(seen.append)
    async with httpx.AsyncClient(timeout=30) as c:
        async with c.stream(
            "POST",
            f"http://127.0.0.1:{m.record.port}/v1/chat/completions",
            json=chat_body(max_tokens=30000, stream=True),
        ) as r:
            async for line in r.aiter_lines():
                if line.startswith("data: {"):
                    break  # got the first token: hang up
        assert services.router.slot(m).inflight <= 1
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            slots = (await c.get(f"{m.base_url}/slots", headers=m.proc.auth_headers)).json()
            if services.router.slot(m).inflight == 0 and seen and not any(s["is_processing"] for s in slots):
                break
            await asyncio.sleep(0.05)
        assert services.router.slot(m).inflight == 0
        assert not any(s["is_processing"] for s in slots), "llama-server kept generating for a gone client"
    # Cut off before llama-server's final event: a generation left running reaches it, with its
    # usage, within the seconds the checks above allow.
    assert len(seen) == 1 and seen[0].completion_tokens == 0


async def test_upstream_killed_mid_stream_ends_the_client_stream_with_an_error_instead_of_hanging(
    services: LlamaMan,
) -> None:
    # A generation far longer than the test's way from the first line to the kill, however loaded
    # the machine: at 2,048 tokens of context the server once finished before the kill came, and
    # the stream ended as it should, with [DONE].
    m = await launch(services, ctx_size=32768)
    # The relay has no timer on this path: the kill closes llama-server's socket and that ends the
    # stream. A relay that waited for anything else (a read timeout, a health check) would leave the
    # client waiting and fail on its read timeout here. How long the ending takes is not asserted:
    # it is the time to pass on what the kernel had buffered before the kill, megabytes of a fast
    # generation, which a loaded machine takes seconds to relay.
    async with httpx.AsyncClient(timeout=httpx.Timeout(30, read=10)) as c:
        async with c.stream(
            "POST",
            f"http://127.0.0.1:{m.record.port}/v1/chat/completions",
            json=chat_body(max_tokens=30000, stream=True),
        ) as r:
            lines = r.aiter_lines()
            async for line in lines:
                if line.startswith("data: {"):
                    break
            assert m.proc.pid is not None
            os.kill(m.proc.pid, signal.SIGKILL)
            last = ""
            async for line in lines:
                if line.startswith("data: "):
                    last = line
    err = json.loads(last[6:])
    assert "error" in err and "mid-stream" in err["error"]["message"]
    # It restarts by itself after a crash (tests/instances/test_crash_recovery.py).
    assert await m.proc.wait_for({S.RESTARTING, S.FAILED}, timeout=2) == S.RESTARTING
    assert services.router.slot(m).inflight == 0


async def test_saving_a_preset_applies_its_sampling_overrides_to_running_instances(
    services: LlamaMan,
) -> None:
    m = await launch(services)
    await services.presets.put("tiny-a.gguf", {"sampling": {"temperature": 0.0, "top_k": 3}})
    async with httpx.AsyncClient(timeout=30) as c:
        r = await c.post(
            f"http://127.0.0.1:{m.record.port}/v1/chat/completions", json=chat_body(temperature=1.7, top_k=40)
        )
        assert r.status_code == 200
        params = (await c.get(f"{m.base_url}/slots", headers=m.proc.auth_headers)).json()[0]["params"]
    assert params["temperature"] == pytest.approx(0.0) and params["top_k"] == 3
    await services.supervisor.flush()
    assert m.record.sampling == {"temperature": 0.0, "top_k": 3}


async def test_replicas_sharing_a_queue_take_work_as_their_slots_free(services: LlamaMan) -> None:
    # One thread each: two llama-servers that each spin a thread per core on a small box stall
    # one another at ggml's busy-wait barriers (a 0.1 s reply took 5-30 s), and this test is
    # about the shared queue, not about CPU contention.
    a = await launch(services, max_concurrent=1, max_queue_depth=8, share_queue=True, threads=1)
    b = await launch(services, max_concurrent=1, max_queue_depth=8, share_queue=True, threads=1)
    served: list[str] = []

    async def one() -> int:
        lease = await services.router.acquire("tiny-a")
        try:
            # Each replica serves one request at a time: the shared queue hands work to a free one.
            assert services.router.slot(lease.instance).running == 1
            served.append(lease.instance.id)
            async with httpx.AsyncClient(timeout=30) as c:
                r = await c.post(
                    f"{lease.base_url}/v1/chat/completions",
                    json=chat_body(max_tokens=200),
                    headers=lease.instance.proc.auth_headers,
                )
                return r.status_code
        finally:
            lease.release()

    statuses = await asyncio.gather(*(one() for _ in range(6)))
    assert statuses == [200] * 6
    # Both replicas took work from the one shared queue.
    assert set(served) == {a.id, b.id}
    gate = services.router.gate_for(a)
    assert gate is services.router.gate_for(b)
    assert gate.max_concurrent == 2 and gate.active == 0 and gate.queued == 0
