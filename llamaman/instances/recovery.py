"""Crashed servers come back by themselves: a llama-server that dies on its own (killed, out of
memory) is started again after an exponential backoff, a few times at most, then left failed with
the reason. Manual and proxy-started instances alike; requests waiting on one are served once it is
back (the router waits for healthy) or refused with the reason once it has failed for good.

A server that dies during its first load is not restarted: that is a setting or a file that will
fail the same way again. One that served for ``stable_after`` seconds before dying starts a fresh
count, so a rare crash never uses up the allowance for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from llamaman.core.state import InstanceState
from llamaman.instances.process import LlamaProcess

log = logging.getLogger(__name__)
S = InstanceState


@dataclass(frozen=True)
class RestartPolicy:
    max_attempts: int = 3
    base: float = 1.0
    cap: float = 60.0
    stable_after: float = 300.0

    def delay(self, attempt: int) -> float | None:
        """Seconds to wait before restart number ``attempt`` (1-based); None once they are spent."""
        if attempt < 1 or attempt > self.max_attempts:
            return None
        return float(min(self.cap, self.base * 2 ** (attempt - 1)))

    def fresh_count(self, served_for: float | None) -> bool:
        """Whether a crash after serving ``served_for`` seconds starts counting from zero again."""
        return served_for is not None and served_for >= self.stable_after


Restart = Callable[[str], Awaitable[object]]


class CrashRecovery:
    """Decides what a crashed server becomes, and schedules its restart (``restart(instance_id)``)."""

    def __init__(self, policy: RestartPolicy, restart: Restart) -> None:
        self.policy = policy
        self.restart = restart
        self.attempts: dict[str, int] = {}
        self._pending: dict[str, asyncio.Task[None]] = {}

    def after_crash(self, proc: LlamaProcess) -> InstanceState:
        """The state a server that just died on its own goes to; called before the change."""
        iid = proc.instance_id
        serving = proc.state == S.HEALTHY
        if serving and self.policy.fresh_count(time.time() - proc.healthy_at if proc.healthy_at else None):
            self.attempts.pop(iid, None)
        if not serving and iid not in self.attempts:
            return S.FAILED  # its first load: the same settings would fail the same way
        attempt = self.attempts.get(iid, 0) + 1
        delay = self.policy.delay(attempt)
        if delay is None:
            spent = self.attempts.pop(iid, 0)
            proc.error = f"gave up after {spent} restart(s): {proc.error or 'llama-server died'}"
            return S.FAILED
        self.attempts[iid] = attempt
        proc.error = (
            f"restarting in {delay:g} s (attempt {attempt} of {self.policy.max_attempts}): "
            f"{proc.error or 'llama-server died'}"
        )
        log.warning("%s: llama-server died; %s", iid, proc.error.splitlines()[0])
        self._schedule(proc, delay)
        return S.RESTARTING

    def _schedule(self, proc: LlamaProcess, delay: float) -> None:
        old = self._pending.pop(proc.instance_id, None)
        if old is not None:
            old.cancel()
        task = asyncio.ensure_future(self._later(proc, delay))
        self._pending[proc.instance_id] = task
        task.add_done_callback(lambda t: self._done(proc.instance_id, t))

    def _done(self, instance_id: str, task: asyncio.Task[None]) -> None:
        if self._pending.get(instance_id) is task:
            del self._pending[instance_id]

    async def _later(self, proc: LlamaProcess, delay: float) -> None:
        await asyncio.sleep(delay)
        # Stopped (or restarted by hand) while it waited: nothing left to do.
        if proc.state == S.RESTARTING:
            try:
                await self.restart(proc.instance_id)
            except Exception:
                log.exception("%s: restart after a crash failed", proc.instance_id)

    def forget(self, instance_id: str) -> None:
        """Someone stopped, restarted or removed the instance: its count and pending restart go."""
        self.attempts.pop(instance_id, None)
        task = self._pending.pop(instance_id, None)
        if task is not None:
            task.cancel()

    async def close(self) -> None:
        tasks = list(self._pending.values())
        self._pending.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
