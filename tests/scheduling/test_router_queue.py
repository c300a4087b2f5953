"""Waiting requests on real servers: listed while they wait, gone cleanly when their client goes,
and an eviction made for nobody is called off."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from llamaman.app import LlamaMan
from llamaman.core.state import InstanceState

S = InstanceState


async def until(cond: Callable[[], bool], timeout: float = 30) -> None:
    """Wait for a condition the router reaches on its own (no event announces it)."""
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.02)


async def test_cancelled_waiter_leaves_the_queue_and_nothing_is_evicted_for_it(services: LlamaMan) -> None:
    router = services.router
    await services.runtime.update({"max_models": 1})
    held = await router.acquire("tiny-a")
    [a] = services.supervisor.list()
    waiter = asyncio.create_task(router.acquire("tiny-b", key_name="alice", priority=2))
    await until(lambda: bool(router.queued()))
    [queued] = router.queued()
    assert (queued["model"], queued["key"], queued["priority"]) == ("tiny-b", "alice", 2)
    assert queued["age_s"] >= 0 and queued["enqueued_at"] > 0
    assert router.slot(a).draining  # tiny-a drains to make room for tiny-b

    waiter.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await waiter
    assert router.queued() == [] and router.waiting == []
    held.release()
    await until(lambda: not router.slot(a).draining)
    # Nobody waits for tiny-b any more: tiny-a stays, tiny-b never loads.
    assert a.state == S.HEALTHY
    assert [m.record.model_path for m in services.supervisor.list()] == ["tiny-a.gguf"]
    lease = await router.acquire("tiny-a")
    assert lease.instance is a
    lease.release()
