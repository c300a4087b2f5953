"""Background loops stop when told, even when woken at the very moment they are stopped."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from llamaman.app import LlamaMan
from llamaman.core.config import Settings
from llamaman.core.tasks import cancel_and_wait, wait_event


async def test_a_loop_woken_as_it_is_stopped_stops() -> None:
    wake = asyncio.Event()
    rounds = 0

    async def loop() -> None:
        nonlocal rounds
        while True:
            rounds += 1
            wake.clear()
            await wait_event(wake, 60)

    task = asyncio.create_task(loop())
    await asyncio.sleep(0)  # the loop waits
    wake.set()  # woken, and stopped before it runs again
    task.cancel()
    await asyncio.wait_for(cancel_and_wait(task), 5)
    assert task.cancelled() and rounds == 1


async def test_waiting_for_an_event_says_whether_it_came() -> None:
    event = asyncio.Event()
    assert await wait_event(event, 0.01) is False
    asyncio.get_running_loop().call_soon(event.set)
    assert await wait_event(event, 5) is True


async def test_the_box_stops_at_once_right_after_a_peer_is_added(
    make_settings: Callable[..., Settings],
) -> None:
    box = LlamaMan(make_settings())
    await box.start()
    try:
        await box.peers.create("elsewhere", "http://127.0.0.1:9", None, "*", enabled=False)
    finally:
        await asyncio.wait_for(box.stop(), 10)  # the peer poller, woken by the change, stops too
