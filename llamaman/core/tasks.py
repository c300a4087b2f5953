"""Background loops owned by a service: stopped by cancelling them and waiting until they are gone."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
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


async def until_idle(idle: Callable[[], bool], at_most: float, every: float = 0.005) -> None:
    """Return once ``idle()`` holds, or after ``at_most`` seconds: for bookkeeping (a database write,
    and a thread's hold on the interpreter) that would otherwise take its CPU time out of the answers
    being given, on a box whose proxy shares its cores with llama-server."""
    deadline = time.monotonic() + at_most
    while not idle() and time.monotonic() < deadline:
        await asyncio.sleep(every)
