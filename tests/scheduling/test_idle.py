"""When the router counts as idle: no request holds a place on an instance or waits for one. What waits
for it (the activity log's writes) is woken by the places being given back, and never waits longer
than it said it would."""

from __future__ import annotations

import asyncio

from llamaman.scheduling.idle import IdleSleep
from llamaman.scheduling.lease import Slot


class Places(IdleSleep):
    def __init__(self, n: int) -> None:
        self.slots = {f"m{i}": Slot() for i in range(n)}


async def test_a_wait_for_idle_ends_when_the_last_place_is_given_back_and_not_before() -> None:
    box = Places(2)
    a, b = box.slots.values()
    a.enter()
    b.enter()
    b.enter()  # one running, one queued at the gate
    assert not box.idle()
    waiting = asyncio.create_task(box.wait_idle(60))
    for slot in (a, b):
        slot.leave()
        await asyncio.sleep(0.01)
        assert not waiting.done()
    b.leave()
    async with asyncio.timeout(5):
        await waiting
    assert box.idle()


async def test_a_wait_for_idle_gives_up_after_the_time_it_was_given() -> None:
    box = Places(1)
    [slot] = box.slots.values()
    slot.enter()
    loop = asyncio.get_running_loop()
    started = loop.time()
    await box.wait_idle(0.05)
    assert loop.time() - started >= 0.05 and not box.idle()
    await box.wait_idle(0)  # nothing left to wait: back at once
