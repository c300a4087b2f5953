"""Background loops owned by a service: stopped by cancelling them and waiting until they are gone."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` and return once it has finished (nothing to do for None or a finished task)."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def wait_event(event: asyncio.Event, timeout: float | None) -> bool:
    """Whether ``event`` is set within ``timeout`` seconds.

    Not ``asyncio.wait_for``: on Python 3.11 it swallows a cancel that arrives while the event is
    being set, so a loop woken just as it was stopped ran on, and ``cancel_and_wait`` never returned."""
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True


async def at_once(at_most: float) -> None:
    """A ``wait_idle`` for a store with no router to ask: nothing to wait for."""
