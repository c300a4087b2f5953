"""The router on real llama-servers: on-demand start, swaps with one slot, drain, collation, sleep."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import httpx
import pytest

from llamaman.app import LlamaMan
from llamaman.core.events import Event
from llamaman.core.state import InstanceState
from llamaman.instances.launch import LaunchSettings
from llamaman.scheduling.router import ModelNotFound

S = InstanceState


async def ask(services: LlamaMan, model: str, max_tokens: int = 6) -> str:
    lease = await services.router.acquire(model)
    try:
        async with httpx.AsyncClient() as c:
            r = await c.post(
                f"{lease.base_url}/v1/chat/completions",
                json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens},
                headers=lease.instance.proc.auth_headers,
                timeout=30,
            )
            return r.json()["choices"][0]["message"]["content"]
    finally:
        lease.release()


class LiveCounter:
    """Watches instance state events and remembers the most llama-servers ever alive at once."""

    def __init__(self, services: LlamaMan) -> None:
        self.services = services
        self.peak = 0
        services.events.listen(self._on, "instance.state")

    def _on(self, _: Event) -> None:
        live = sum(1 for m in self.services.supervisor.list() if m.proc.pid is not None)
        self.peak = max(self.peak, live)


@pytest.fixture
async def one_slot(services: LlamaMan) -> LlamaMan:
    await services.runtime.update({"max_models": 1})
    return services


async def test_first_request_starts_the_model_from_nothing(services: LlamaMan) -> None:
    assert services.supervisor.list() == []
    assert (await ask(services, "tiny-a")).startswith("abcdef")
    [m] = services.supervisor.list()
    assert m.record.origin == "proxy" and m.state == S.HEALTHY
    assert (await ask(services, "tiny-a:latest")).startswith("abcdef")
    assert len(services.supervisor.list()) == 1


async def test_unknown_model_is_not_found(services: LlamaMan) -> None:
    with pytest.raises(ModelNotFound):
        await services.router.acquire("no-such-model")


async def test_concurrent_first_requests_share_one_load(services: LlamaMan) -> None:
    answers = await asyncio.gather(*(ask(services, "tiny-b") for _ in range(6)))
    assert all(a.startswith("zyxw") for a in answers)
    assert len(services.supervisor.list()) == 1


async def test_alternating_models_with_one_slot_each_get_their_own_text(one_slot: LlamaMan) -> None:
    counter = LiveCounter(one_slot)
    for i in range(6):
        model, text = ("tiny-a", "abc") if i % 2 == 0 else ("tiny-b", "zyx")
        assert (await ask(one_slot, model)).startswith(text)
    assert counter.peak == 1


async def test_eight_clients_alternating_swap_far_less_than_once_per_request(one_slot: LlamaMan) -> None:
    counter = LiveCounter(one_slot)
    errors: list[BaseException] = []
    wrong = 0

    async def client(k: int) -> None:
        nonlocal wrong
        for j in range(5):
            model, text = ("tiny-a", "abc") if (k + j) % 2 == 0 else ("tiny-b", "zyx")
            try:
                if not (await ask(one_slot, model)).startswith(text):
                    wrong += 1
            except Exception as exc:  # every failure is reported below
                errors.append(exc)
            await asyncio.sleep(random.random() * 0.01)

    await asyncio.gather(*(client(k) for k in range(8)))
    swaps = one_slot.router.swaps
    print(f"40 alternating requests from 8 clients with one slot: {swaps} model loads")
    assert errors == [] and wrong == 0
    assert counter.peak == 1
    assert swaps <= 12


async def test_a_stream_in_progress_finishes_before_its_model_is_swapped_out(one_slot: LlamaMan) -> None:
    lease_a = await one_slot.router.acquire("tiny-a")
    pieces: list[str] = []
    got_first = asyncio.Event()

    async def stream_a() -> None:
        try:
            async with (
                httpx.AsyncClient() as c,
                c.stream(
                    "POST",
                    f"{lease_a.base_url}/v1/chat/completions",
                    json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 300, "stream": True},
                    headers=lease_a.instance.proc.auth_headers,
                    timeout=60,
                ) as r,
            ):
                async for line in r.aiter_lines():
                    if line.startswith("data: {"):
                        import json

                        delta = json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
                        pieces.append(delta)
                        got_first.set()
                        await asyncio.sleep(0.002)  # a slow reader keeps the stream open for a while
        finally:
            lease_a.release()

    task_a = asyncio.create_task(stream_a())
    await got_first.wait()
    b_answer = await ask(one_slot, "tiny-b")
    assert task_a.done(), "B was served while A's stream was still running"
    await task_a
    from llamaman.testing.tiny_gguf import expected_text

    text = "".join(pieces)
    assert len(text) == 300 and text == expected_text("A", 300)
    assert b_answer.startswith("zyx")


async def test_idle_instance_sleeps_and_wakes_on_request(services: LlamaMan) -> None:
    m = await services.supervisor.launch(
        LaunchSettings(model_path="tiny-a.gguf", ctx_size=512, idle_timeout_min=0.01)  # 0.6 s
    )
    await m.proc.wait_for({S.HEALTHY}, timeout=30)
    await m.proc.wait_for({S.SLEEPING}, timeout=10)
    assert m.proc.pid is None
    assert (await ask(services, "tiny-a")).startswith("abc")
    assert m.state == S.HEALTHY
    assert len(services.supervisor.list()) == 1


async def test_keep_alive_zero_unloads_right_after_the_reply(services: LlamaMan) -> None:
    lease = await services.router.acquire("tiny-a")
    lease.keep_alive(0)
    m = lease.instance
    lease.release()
    await m.proc.wait_for({S.STOPPED, S.SLEEPING}, timeout=10)


async def test_manual_instances_are_not_evicted_by_api_traffic(one_slot: LlamaMan) -> None:
    m = await one_slot.supervisor.launch(LaunchSettings(model_path="tiny-a.gguf", ctx_size=512))
    await m.proc.wait_for({S.HEALTHY}, timeout=30)
    from llamaman.scheduling.router import ModelUnavailable

    with pytest.raises(ModelUnavailable, match="manually launched"):
        await one_slot.router.acquire("tiny-b")
    assert m.state == S.HEALTHY
    await one_slot.runtime.update({"evict_manual": True})
    assert (await ask(one_slot, "tiny-b")).startswith("zyx")
    assert m.state == S.SLEEPING


async def test_embedding_instances_neither_count_nor_get_evicted(one_slot: LlamaMan) -> None:
    lease = await one_slot.router.acquire("tiny-embed")
    emb = lease.instance
    lease.release()
    assert emb.settings.embedding
    assert (await ask(one_slot, "tiny-a")).startswith("abc")
    assert (await ask(one_slot, "tiny-b")).startswith("zyx")
    assert emb.state == S.HEALTHY


async def test_a_failed_load_is_reported_to_every_waiter(services: LlamaMan, models_dir: Any) -> None:
    from llamaman.scheduling.router import ModelUnavailable
    from llamaman.testing.tiny_gguf import write_tiny_model

    # A model whose load fails: llama-server refuses a context far beyond memory.
    write_tiny_model(models_dir / "tiny-c.gguf", "A")
    await services.library.ascan()
    await services.presets.put("tiny-c.gguf", {"extra_args": "--cache-type-k no-such-type"})
    results = await asyncio.gather(
        *(services.router.acquire("tiny-c") for _ in range(3)), return_exceptions=True
    )
    assert all(isinstance(r, ModelUnavailable) for r in results), results


async def test_a_removed_instance_takes_its_slot_and_gate_with_it(services: LlamaMan) -> None:
    m = await services.supervisor.launch(LaunchSettings(model_path="tiny-a.gguf"))
    lease = await services.router.acquire_instance(m)
    lease.release()
    assert m.id in services.router.slots and m.id in services.router.gates
    await services.supervisor.remove(m.id)
    assert m.id not in services.router.slots and m.id not in services.router.gates


async def test_a_free_place_is_leased_at_once_and_anything_else_takes_the_waiting_path(
    services: LlamaMan,
) -> None:
    router = services.router
    assert router.lease_now("tiny-a") is None  # not running: acquire starts it
    assert router.lease_now("no-such-model") is None  # acquire rescans and answers 404
    await services.presets.put("tiny-a.gguf", {"max_concurrent": 1, "max_queue_depth": 4})
    assert (await ask(services, "tiny-a")).startswith("abcdef")
    [m] = services.supervisor.list()

    lease = router.lease_now("tiny-a:latest")
    assert lease is not None and lease.instance is m and lease.load_duration_ns == 0
    assert router.slot(m).inflight == 1 and router.gate_for(m).active == 1
    assert router.lease_now("tiny-a") is None  # its one place is taken
    waiter = asyncio.create_task(router.acquire("tiny-a"))
    lease.release()
    second = await asyncio.wait_for(waiter, 30)
    assert second.instance is m
    second.release()
    assert router.slot(m).inflight == 0 and router.gate_for(m).active == 0
    # A request that needs more context than the instance has goes the slow way (a relaunch).
    assert router.lease_now("tiny-a", min_ctx=10**6) is None
