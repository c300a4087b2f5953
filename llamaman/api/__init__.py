"""REST management API (JSON). Paths and bodies follow the original LlamaMan."""

from fastapi import APIRouter

from llamaman.api import (
    auth,
    backup,
    downloads,
    inflight,
    instances,
    keys,
    models,
    placement,
    presets,
    system,
    telemetry,
)


def build_router() -> APIRouter:
    router = APIRouter()
    for module in (instances, models, presets, system, telemetry, auth, keys, downloads, backup, placement, inflight):
        router.include_router(module.router)
    return router
