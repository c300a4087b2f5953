"""llama.cpp router-mode model management: ``GET /models``, ``POST /models/load``,
``POST /models/unload`` and the ``GET /models/sse`` event stream with llama-server's own request and
answer shapes, so tools written for a llama-server router drive LlamaMan unchanged."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, StreamingResponse

from llamaman.core.events import Event
from llamaman.proxy.common import ProxyError, lease_for, read_json, require_model, services_of
from llamaman.proxy.openai import listing_identity, model_objects, resolve_or_404
from llamaman.services import Services
from llamaman.upstream.relay import STREAM_HEADERS

router = APIRouter(tags=["router mode"])


@router.get("/models")
async def list_models(request: Request) -> JSONResponse:
    # The library is rescanned on every listing, which is what router mode's ?reload=1 asks for.
    objects = await model_objects(services_of(request), listing_identity(request))
    return JSONResponse({"object": "list", "data": objects})


@router.post("/models/load")
async def load(request: Request) -> JSONResponse:
    """Start the model (or find it running) and answer once it serves requests."""
    services = services_of(request)
    body, _ = await read_json(request)
    model = require_model(body)
    lease = await lease_for(services, model)
    lease.release()
    return JSONResponse({"success": True})


@router.post("/models/unload")
async def unload(request: Request) -> JSONResponse:
    """Stop every running instance of the model once its requests in flight are done."""
    services = services_of(request)
    body, _ = await read_json(request)
    model = require_model(body)
    entry = await resolve_or_404(services, model)
    if services.router.status(entry) == "unloaded":
        raise ProxyError(400, "model is not running")
    await services.router.unload(entry.rel_path)
    return JSONResponse({"success": True})


# Router mode's model status for an instance state ("sleeping" is LlamaMan's own, kept as it is).
_STATUS = {"starting": "loading", "restarting": "loading", "healthy": "loaded", "sleeping": "sleeping"}
KEEP_ALIVE_S = 15.0


def status_change(services: Services, ev: Event) -> dict[str, Any] | None:
    """An instance event as router mode's ``status_change`` event of its model (None: not one)."""
    m = services.supervisor.instances.get(ev.data.get("id", ""))
    if m is None:
        return None
    data: dict[str, Any]
    if ev.topic == "instance.progress":
        loaded = ev.data.get("stage") == "loaded"
        data = {"status": "loaded" if loaded else "loading"}
        if not loaded:
            data["progress"] = {"stage": ev.data.get("stage"), "fraction": ev.data.get("fraction")}
    elif ev.topic == "instance.state":
        data = {"status": _STATUS.get(str(ev.data.get("new")), "unloaded")}
        if ev.data.get("new") == "failed":
            data["exit_code"] = m.proc.exit_code
    else:
        return None
    return {"model": m.record.model_name, "event": "status_change", "data": data}


@router.get("/models/sse")
async def model_events(request: Request) -> StreamingResponse:
    """Every status change of the models this caller may list (loads with their progress), as
    server-sent events until the client leaves."""
    services = services_of(request)
    identity = listing_identity(request)

    async def frames() -> AsyncIterator[bytes]:
        async with services.events.subscribe("instance.") as queue:
            while True:
                try:
                    ev = await asyncio.wait_for(queue.get(), KEEP_ALIVE_S)
                except TimeoutError:
                    yield b": keep-alive\n\n"
                    continue
                out = status_change(services, ev)
                m = services.supervisor.instances.get(ev.data.get("id", ""))
                if out is None or m is None:
                    continue
                if identity is not None and not identity.may_use({m.record.model_name, m.record.model_path}):
                    continue
                yield b"data: " + json.dumps(out).encode() + b"\n\n"

    return StreamingResponse(frames(), media_type="text/event-stream", headers=STREAM_HEADERS)
