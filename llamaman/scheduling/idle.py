"""When instances sleep: per-request keep-alive (Ollama's ``keep_alive``) and idle timeouts.

A mixin of the router, which owns the slots it reads; kept apart because it is a policy of its own.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import TYPE_CHECKING, Any

from llamaman.core.state import InstanceState
from llamaman.core.tasks import wait_event
from llamaman.instances.supervisor import ManagedInstance

if TYPE_CHECKING:
    from llamaman.core.events import EventBus
    from llamaman.core.runtime import RuntimeConfig
    from llamaman.instances.supervisor import Supervisor
    from llamaman.scheduling.lease import Slot

log = logging.getLogger(__name__)
S = InstanceState


class IdleSleep:
    sup: Supervisor
    slots: dict[str, Slot]
    runtime: RuntimeConfig
    events: EventBus

    if TYPE_CHECKING:  # provided by the router

        def slot(self, m: ManagedInstance) -> Slot: ...
        def _spawn(self, coro: Any) -> None: ...
        def _kick(self) -> None: ...

    def idle(self) -> bool:
        """No request holds a place on an instance, or waits for one."""
        return all(s.inflight == 0 for s in self.slots.values())

    async def wait_idle(self, at_most: float) -> None:
        """Return once ``idle`` holds, or after ``at_most`` seconds (woken by the slots, not a timer)."""
        deadline = time.monotonic() + at_most
        while (busy := next((s for s in self.slots.values() if s.inflight), None)) is not None:
            if not await wait_event(busy.idle, deadline - time.monotonic()):
                return

    def set_keep_alive(self, m: ManagedInstance, seconds: float | None) -> None:
        s = self.slot(m)
        if seconds is None:
            return
        if seconds <= 0:
            s.unload_after = True
            s.keep_alive_until = None
        else:
            s.unload_after = False
            s.keep_alive_until = math.inf if math.isinf(seconds) else time.monotonic() + seconds

    def counters(self, m: ManagedInstance) -> dict[str, Any]:
        s = self.slots.get(m.id)
        expires = None
        if s is not None and s.keep_alive_until is not None:
            # keep_alive -1 (forever) has no expiry at all.
            if math.isfinite(s.keep_alive_until):
                expires = time.time() + (s.keep_alive_until - time.monotonic())
        elif m.state == S.HEALTHY and (t := self.idle_timeout(m)):
            expires = time.time() + t - (time.monotonic() - m.last_used)
        return {
            "active_requests": s.running if s else 0,
            "queued_requests": s.inflight - s.running if s else 0,
            "inflight": s.inflight if s else 0,
            "expires_at": expires,
        }

    def idle_timeout(self, m: ManagedInstance) -> float:
        """Seconds of idleness after which ``m`` sleeps; 0 = never."""
        if m.settings.idle_timeout_min:
            return m.settings.idle_timeout_min * 60
        if m.record.origin == "proxy":
            return self.runtime.current.idle_timeout_min * 60
        return 0.0

    async def _idle_loop(self) -> None:
        while True:
            await asyncio.sleep(self._idle_tick())
            now = time.monotonic()
            for m in self.sup.list():
                if m.state != S.HEALTHY:
                    continue
                s = self.slot(m)
                if s.inflight or s.draining:
                    continue
                if s.keep_alive_until is not None:
                    due = now >= s.keep_alive_until
                else:
                    t = self.idle_timeout(m)
                    due = bool(t) and now - m.last_used >= t
                if due:
                    s.keep_alive_until = None
                    s.draining = True
                    self._spawn(self._sleep(m))

    def _idle_tick(self) -> float:
        timeouts = [self.idle_timeout(m) for m in self.sup.list() if m.state == S.HEALTHY]
        shortest = min((t for t in timeouts if t), default=60.0)
        return max(0.1, min(1.0, shortest / 10))

    async def _sleep(self, m: ManagedInstance) -> None:
        try:
            log.info("%s idle: sleeping", m.record.model_name)
            await self.sup.sleep(m.id)
            self.events.publish("router.sleep", model=m.record.model_name, instance=m.id)
        finally:
            self.slot(m).draining = False
            self._kick()
