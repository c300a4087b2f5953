"""Server-sent event streams of one object's events (instance logs, download progress)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse

from llamaman.core.events import Event, EventBus

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
KEEP_ALIVE_S = 15


def sse(data: Any, event: str | None = None) -> str:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data)}\n\n"


# Renders one event of the object as SSE frames, and says whether the stream ends with it.
Render = Callable[[Event], tuple[list[str], bool]]
# The object's frames so far, and whether it has already finished. Taken once the stream listens, so
# nothing that happens between the snapshot and the subscription falls into a gap.
Snapshot = Callable[[], tuple[list[str], bool]]


def object_events(
    request: Request,
    events: EventBus,
    prefix: str,
    object_id: str,
    snapshot: Snapshot,
    render: Render,
) -> StreamingResponse:
    """Replay the snapshot's frames, then every event of ``object_id`` under ``prefix`` until
    ``render`` says the stream is over or the client leaves."""

    async def frames() -> AsyncIterator[str]:
        async with events.subscribe(prefix) as q:
            backlog, finished = snapshot()
            for frame in backlog:
                yield frame
            if finished:
                return
            while not await request.is_disconnected():
                try:
                    ev = await asyncio.wait_for(q.get(), KEEP_ALIVE_S)
                except TimeoutError:
                    yield ": keep-alive\n\n"
                    continue
                if ev.data.get("id") != object_id:
                    continue
                out, done = render(ev)
                for frame in out:
                    yield frame
                if done:
                    return

    return StreamingResponse(frames(), media_type="text/event-stream", headers=SSE_HEADERS)
