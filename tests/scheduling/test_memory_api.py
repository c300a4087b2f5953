"""The memory limit through the REST API and the model endpoints: /api/placement, the
memory_limit setting (bad syntax is a 422 that says why; a good one takes effect at once), a model
that can never fit refused with its footprint and the limit, /api/ps reporting the footprint."""

from __future__ import annotations

import asyncio
import contextlib

import httpx

from llamaman.app import LlamaMan
from tests.helpers import asgi

HI = [{"role": "user", "content": "hi"}]


async def test_placement_lists_the_host_and_the_resident_model(
    api: httpx.AsyncClient, services: LlamaMan
) -> None:
    before = (await api.get("/api/placement")).json()
    [cpu] = before["devices"]
    assert cpu["id"] == "cpu" and cpu["models"] == [] and 0 < cpu["limit"] <= cpu["total"]
    async with asgi(services) as proxy:
        r = await proxy.post(
            "/v1/chat/completions", json={"model": "tiny-a", "messages": HI, "max_tokens": 3}
        )
        assert r.status_code == 200, r.text
        ps = (await proxy.get("/api/ps")).json()["models"]
    [cpu] = (await api.get("/api/placement")).json()["devices"]
    [resident] = cpu["models"]
    assert resident["model"] == "tiny-a" and resident["bytes"] > 0
    assert cpu["used_by_models"] == resident["bytes"]
    # /api/ps reports what the scheduler accounts.
    assert [(m["name"], m["size"], m["size_vram"]) for m in ps] == [("tiny-a:latest", resident["bytes"], 0)]


async def test_bad_memory_limit_is_a_422_that_says_why(api: httpx.AsyncClient, services: LlamaMan) -> None:
    for text, words in [("cpu=lots", "is not a size"), ("tpu0=1GiB", "unknown device 'tpu0'")]:
        r = await api.post("/api/settings", json={"memory_limit": text})
        assert r.status_code == 422, r.text
        assert "memory_limit" in r.json()["error"] and words in r.json()["error"]
    assert services.runtime.current.memory_limit is None


async def test_memory_limit_takes_effect_at_once(api: httpx.AsyncClient) -> None:
    r = await api.post("/api/settings", json={"memory_limit": "cpu=3GiB"})
    assert r.status_code == 200 and r.json()["memory_limit"] == "cpu=3GiB"
    [cpu] = (await api.get("/api/placement")).json()["devices"]
    assert cpu["limit"] == 3 * 1024**3


async def test_a_model_that_can_never_fit_is_refused_with_its_size_and_the_limit(
    api: httpx.AsyncClient, services: LlamaMan
) -> None:
    assert (await api.post("/api/settings", json={"memory_limit": "cpu=1MiB"})).status_code == 200
    async with asgi(services) as proxy:
        r = await proxy.post(
            "/v1/chat/completions", json={"model": "tiny-a", "messages": HI, "max_tokens": 3}
        )
        assert r.status_code == 422, r.text
        message = r.text
        assert "tiny-a" in message and "MiB" in message and "cpu 1.0 MiB" in message
        r = await proxy.post("/api/chat", json={"model": "tiny-a", "messages": HI, "stream": False})
        assert r.status_code == 422 and "never be loaded" in r.json()["error"]
    assert services.supervisor.list() == []


async def test_a_keys_priority_is_kept_and_orders_its_waiting_requests(
    api: httpx.AsyncClient, services: LlamaMan
) -> None:
    r = await api.post("/api/api-keys", json={"name": "batch", "priority": 101})
    assert r.status_code == 422 and "priority" in r.text
    r = await api.post("/api/api-keys", json={"name": "urgent", "priority": 3})
    assert r.status_code == 201 and r.json()["priority"] == 3
    key, key_id = r.json()["key"], r.json()["id"]
    assert (await api.patch(f"/api/api-keys/{key_id}", json={"priority": 4})).json()["priority"] == 4

    await services.runtime.update({"max_models": 1})
    held = await services.router.acquire("tiny-a")
    async with asgi(services) as proxy:
        body = {"model": "tiny-b", "messages": HI, "max_tokens": 3}
        request = asyncio.create_task(
            proxy.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"})
        )
        async with asyncio.timeout(30):
            while not services.router.queued():
                await asyncio.sleep(0.02)
        [queued] = services.router.queued()
        assert (queued["model"], queued["key"], queued["priority"]) == ("tiny-b", "urgent", 4)
        # The client goes away: its request leaves the queue.
        request.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await request
        assert services.router.queued() == []
    held.release()
