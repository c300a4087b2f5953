"""Requests in flight, queued or running: what the in-flight list shows and may cancel.

Every proxied request is one ``Exchange``. It is registered here while it waits for a place on an
instance (``queued``) and again, under the same id, once it is sent upstream (``running``); the relay
forgets it when it records the finished exchange. Aborting one (an administrator, or its client
hanging up) calls the hooks the request's own code registered on its exchange: a queued request
stops waiting, a running one closes its upstream connection, which makes llama-server stop
generating and free the slot.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

from starlette.types import Receive

from llamaman.core.errors import Conflict, NotFound
from llamaman.core.exchange import Exchange, Phase

T = TypeVar("T")

CANCELLED_BY_ADMIN = "cancelled by an administrator"
CLIENT_LEFT = "the client disconnected"
CUT_OFF = "cut off: the server stopped before the answer was ready"


class RequestCancelled(Conflict):
    """The request was aborted before it finished (``message`` says why)."""


class InflightNotFound(NotFound):
    pass


class InflightRegistry:
    def __init__(self) -> None:
        self._entries: dict[str, Exchange] = {}

    def queued(self, ex: Exchange) -> None:
        ex.phase = Phase.QUEUED
        self._entries[ex.id] = ex

    def running(self, ex: Exchange) -> None:
        ex.phase = Phase.RUNNING
        self._entries[ex.id] = ex

    def forget(self, ex: Exchange) -> None:
        # Only this record: a queued placeholder must not drop the running record that took its id.
        if self._entries.get(ex.id) is ex:
            del self._entries[ex.id]

    def get(self, request_id: str) -> Exchange:
        ex = self._entries.get(request_id)
        if ex is None:
            raise InflightNotFound(f"no request '{request_id}' is queued or running")
        return ex

    def cancel(self, request_id: str, reason: str = CANCELLED_BY_ADMIN) -> Exchange:
        ex = self.get(request_id)
        ex.abort(reason)
        return ex

    def snapshot(self) -> list[dict[str, Any]]:
        """Every queued and running request, oldest first."""
        now = time.monotonic()
        rows = [describe(ex, now) for ex in self._entries.values()]
        rows.sort(key=lambda r: -r["age_s"])
        return rows

    def __len__(self) -> int:
        return len(self._entries)


def describe(ex: Exchange, now: float | None = None) -> dict[str, Any]:
    now = time.monotonic() if now is None else now
    identity = ex.identity
    return {
        "id": ex.id,
        "model": ex.model,
        "endpoint": ex.endpoint,
        "key": identity.name if identity is not None else None,
        "age_s": round(now - ex.started, 3),
        "state": ex.phase.value,
        "stream": ex.stream,
        "tokens": max(ex.progress_tokens, ex.completion_tokens),
        "cancelled": ex.cancelled,
    }


async def _disconnected(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def abortable(ex: Exchange, work: Awaitable[T], receive: Receive | None = None) -> T:
    """``work``'s result, unless the exchange is aborted (or, given ``receive``, its client hangs up)
    first: then ``work`` is cancelled, closing its upstream connection so llama-server stops, and
    ``RequestCancelled`` says why.

    ``work`` runs in the calling task (a queued request handed its place goes on to write upstream
    in the same turn of the loop): an abort cancels that task while it waits, and only that cancel
    becomes ``RequestCancelled``; a cancel of the task from elsewhere stays a cancel.

    For answers that only come whole (non-streamed): a stream notices its client leaving by itself.
    """
    if ex.cancelled is not None:
        if asyncio.iscoroutine(work):
            work.close()
        raise RequestCancelled(ex.cancelled)
    task = asyncio.current_task()
    assert task is not None, "abortable runs in a task"
    watcher: asyncio.Future[None] | None = None
    if receive is not None:
        watcher = asyncio.ensure_future(_disconnected(receive))
        watcher.add_done_callback(lambda w: w.cancelled() or w.exception() or ex.abort(CLIENT_LEFT))
    hook = task.cancel
    ex.on_abort(hook)
    try:
        return await work
    except asyncio.CancelledError:
        if ex.cancelled is not None and task.uncancel() == 0:
            raise RequestCancelled(ex.cancelled) from None
        raise
    finally:
        ex.off_abort(hook)
        if watcher is not None:
            watcher.cancel()
