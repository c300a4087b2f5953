"""/api/inflight: the requests queued or running on the model endpoints, and cancelling one."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from llamaman.api.deps import ServicesDep
from llamaman.upstream.inflight import describe

router = APIRouter(prefix="/api", tags=["inflight"])


@router.get("/inflight")
async def list_inflight(services: ServicesDep) -> list[dict[str, Any]]:
    """Queued and running requests, oldest first: id, model, key name, age, state, tokens so far."""
    return services.relay.inflight.snapshot()


@router.delete("/inflight/{request_id}")
async def cancel_inflight(request_id: str, services: ServicesDep) -> dict[str, Any]:
    """Cancel one: a queued request leaves the queue, a running one is stopped upstream; either way
    its client is told it was cancelled by an administrator."""
    return describe(services.relay.inflight.cancel(request_id))
