"""Acceptance on real llama-servers: three tiny models, a memory limit that holds two of them by
their reported footprints and no count limit. Requests cycling through the three never push the
resident footprints over the limit, two stay resident when two fit, and every answer comes from
the model asked for."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from llamaman.app import LlamaMan
from llamaman.core.events import Event
from llamaman.core.state import InstanceState
from llamaman.testing.tiny_gguf import write_tiny_model
from tests.helpers import asgi

S = InstanceState
# Model C writes model A's text: its answers are told apart by the instance that served them.
VARIANT = {"tiny-a": "A", "tiny-b": "B", "tiny-c": "A"}
TEXT = {"A": "abc", "B": "zyx"}


@pytest.fixture
def models_dir(models_dir: Path) -> Path:
    write_tiny_model(models_dir / "tiny-c.gguf", "A", name="tiny-llama-c")
    return models_dir


class ResidentWatch:
    """On every state change: the sum of footprints of instances holding memory, at its peak."""

    def __init__(self, services: LlamaMan) -> None:
        self.services = services
        self.peak = 0
        services.events.listen(self._on, "instance.state")

    def resident(self) -> int:
        router = self.services.router
        held = (S.STARTING, S.HEALTHY, S.STOPPING)
        return sum(
            sum(router.usage_of(m).values()) for m in self.services.supervisor.list() if m.state in held
        )

    def _on(self, _: Event) -> None:
        self.peak = max(self.peak, self.resident())


async def ask(services: LlamaMan, model: str) -> None:
    lease = await services.router.acquire(model)
    try:
        assert lease.instance.record.model_path == f"{model}.gguf"
        async with httpx.AsyncClient() as c:
            r = await c.post(
                f"{lease.base_url}/v1/chat/completions",
                json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
                headers=lease.instance.proc.auth_headers,
                timeout=60,
            )
        assert r.json()["choices"][0]["message"]["content"].startswith(TEXT[VARIANT[model]])
    finally:
        lease.release()


async def ps_sizes(services: LlamaMan) -> dict[str, int]:
    async with asgi(services) as proxy:
        models = (await proxy.get("/api/ps")).json()["models"]
    return {m["name"].removesuffix(":latest"): m["size"] for m in models}


async def test_a_memory_limit_for_two_of_three_models_holds_two_and_never_more(services: LlamaMan) -> None:
    # Their footprints as /api/ps reports them, each loaded once (and measured) with no limit.
    sizes: dict[str, int] = {}
    for model in VARIANT:
        await ask(services, model)
    for _ in range(100):
        if len(services.router.footprints) == len(VARIANT):  # all three measured after their loads
            break
        await asyncio.sleep(0.1)
    assert all(fp.measured for fp in services.router.footprints.values())
    sizes = await ps_sizes(services)
    assert sorted(sizes) == sorted(VARIANT)
    for model in VARIANT:
        await services.router.unload(model)
    evictions = services.router.evictions
    # Any two fit (their sum is at most the total less the smallest); all three never do.
    limit = sum(sizes.values()) - min(sizes.values()) // 2
    await services.runtime.update({"memory_limit": f"cpu={limit}"})
    watch = ResidentWatch(services)

    for model in ["tiny-a", "tiny-b", "tiny-c", "tiny-a", "tiny-c", "tiny-b", "tiny-a"]:
        await ask(services, model)
        resident = await ps_sizes(services)
        assert sum(resident.values()) <= limit, resident
        assert model in resident
    assert len(await ps_sizes(services)) == 2  # two fit, so two stay
    # All at once, in a shuffled order: still never over the limit, every answer its own model's.
    await asyncio.gather(*(ask(services, m) for m in ["tiny-c", "tiny-a", "tiny-b"] * 3))
    assert 0 < watch.peak <= limit
    assert services.router.evictions > evictions  # the cycle made room by evicting, not by luck
    assert sum((await ps_sizes(services)).values()) <= limit
