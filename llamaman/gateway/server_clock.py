"""One clock for all the uvicorn servers of the process, and servers that stop the moment they are told.

uvicorn's server wakes ten times a second to see whether it should stop, and once a second of those
it refreshes its ``Date`` header. LlamaMan runs several servers on one event loop (the UI's, the
proxy's, one per instance listener), so an idle process woke well over ten times a second for this
alone: about half of its idle CPU. Here each server instead waits for its stop to be asked for, and
a single task per event loop ticks every server once a second (``on_tick``: the ``Date`` header,
uvicorn's notify callback and request limit, as before).

``should_exit`` stays uvicorn's attribute, so whoever stops a server (a signal through uvicorn's
``handle_exit``, NiceGUI's shutdown from another thread, ``ProxyServer.stop``) does it as before; the
server now notices at once instead of on its next tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from typing import Any

TICK_SECONDS = 1.0


class _Clock:
    """The ticking task of one event loop, running while at least one server is registered."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.servers: list[Any] = []
        self.task: asyncio.Task[None] | None = None
        self.counter = 0

    def add(self, server: Any) -> None:
        self.servers.append(server)
        if self.task is None or self.task.done():
            self.task = self.loop.create_task(self._run(), name="server-clock")

    def discard(self, server: Any) -> None:
        with contextlib.suppress(ValueError):
            self.servers.remove(server)

    async def _run(self) -> None:
        while self.servers:
            await asyncio.sleep(TICK_SECONDS)
            # uvicorn refreshes the Date header when the count is a multiple of ten.
            self.counter = (self.counter + 10) % 864000
            for server in list(self.servers):
                try:
                    if await server.on_tick(self.counter):
                        server.should_exit = True
                except Exception:  # one server's tick must not stop the others'
                    server.should_exit = True
        self.task = None


_clocks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Clock] = weakref.WeakKeyDictionary()


def _clock(loop: asyncio.AbstractEventLoop) -> _Clock:
    clock = _clocks.get(loop)
    if clock is None:
        clock = _clocks[loop] = _Clock(loop)
    return clock


def _get_should_exit(self: Any) -> bool:
    return bool(self.__dict__.get("_should_exit", False))


def _set_should_exit(self: Any, value: bool) -> None:
    self.__dict__["_should_exit"] = value
    waker = self.__dict__.get("_exit_waker")
    if value and waker is not None:
        loop, event = waker
        # Called from signal handlers and from other threads (NiceGUI stops its server from one).
        with contextlib.suppress(RuntimeError):  # the loop has closed: nothing waits any more
            loop.call_soon_threadsafe(event.set)


async def _main_loop(self: Any) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    self.__dict__["_exit_waker"] = (loop, stop)
    if await self.on_tick(0):  # the first tick sets the Date header, as uvicorn's own loop does
        return
    if self.should_exit:
        return
    clock = _clock(loop)
    clock.add(self)
    try:
        await stop.wait()
    finally:
        clock.discard(self)
        self.__dict__.pop("_exit_waker", None)


class SharedClock:
    """Mixin for a ``uvicorn.Server`` subclass: ticked by the loop's shared clock, stopped at once."""

    should_exit = property(_get_should_exit, _set_should_exit)
    main_loop = _main_loop


def share_clock(server_class: type) -> None:
    """Give an existing ``uvicorn.Server`` subclass the shared clock (for servers another library
    makes, such as NiceGUI's). Must run before the server is created."""
    server_class.should_exit = property(_get_should_exit, _set_should_exit)  # type: ignore[attr-defined]
    server_class.main_loop = _main_loop  # type: ignore[attr-defined]
