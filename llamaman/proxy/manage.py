"""llama.cpp router-mode model management: ``GET /models``, ``POST /models/load`` and
``POST /models/unload`` with llama-server's own request and answer shapes, so tools written for a
llama-server router drive LlamaMan unchanged."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse

from llamaman.proxy.common import ProxyError, lease_for, read_json, require_model, services_of
from llamaman.proxy.openai import listing_identity, model_objects, resolve_or_404

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
