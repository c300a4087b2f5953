"""Per-instance concurrency gate: at most ``max_concurrent`` requests run, up to ``max_queue`` wait in
FIFO order, everyone beyond that is turned away (the proxy answers 429 with Retry-After)."""

from __future__ import annotations

import asyncio
import collections

from llamaman.core.errors import Throttled


class QueueFull(Throttled):
    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message, retry_after=retry_after)
        self.retry_after: int = retry_after


class Gate:
    """A FIFO semaphore with a bounded queue. ``max_concurrent`` 0 means no limit."""

    def __init__(self, max_concurrent: int = 0, max_queue: int = 0) -> None:
        self.max_concurrent = max_concurrent
        self.max_queue = max_queue
        self.active = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def queued(self) -> int:
        return len(self._waiters)

    def configure(self, max_concurrent: int, max_queue: int) -> None:
        self.max_concurrent, self.max_queue = max_concurrent, max_queue
        self._hand_over()

    def _has_room(self) -> bool:
        return self.max_concurrent <= 0 or self.active < self.max_concurrent

    def open_now(self) -> bool:
        """Whether ``try_acquire`` would give a place now."""
        return self._has_room() and not self._waiters

    def try_acquire(self) -> bool:
        """A place now, if one is free and nobody waits for one (FIFO); False otherwise."""
        if self._has_room() and not self._waiters:
            self.active += 1
            return True
        return False

    async def acquire(self) -> None:
        if self.try_acquire():
            return
        if len(self._waiters) >= self.max_queue:
            raise QueueFull(
                f"server busy: {self.active} request(s) running and {len(self._waiters)} queued "
                f"(max_concurrent {self.max_concurrent}, max_queue_depth {self.max_queue})"
            )
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except BaseException:
            if fut.done() and not fut.cancelled():
                # The slot was handed to us just as we gave up: pass it on.
                self.release()
            else:
                self._waiters.remove(fut)
            raise

    def release(self) -> None:
        self.active -= 1
        self._hand_over()

    def _hand_over(self) -> None:
        while self._waiters and self._has_room():
            fut = self._waiters.popleft()
            if not fut.done():
                self.active += 1
                fut.set_result(None)
