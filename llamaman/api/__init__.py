"""REST management API (JSON). Paths and bodies follow the original LlamaMan."""

from types import ModuleType

from fastapi import APIRouter

from llamaman.api import (
    auth,
    backup,
    downloads,
    inflight,
    instances,
    keys,
    models,
    nodes,
    peers,
    placement,
    presets,
    system,
    telemetry,
    workers,
)


def build_router() -> APIRouter:
    router = APIRouter()
    modules: tuple[ModuleType, ...] = (instances, models, presets, system, telemetry, auth, keys, downloads)
    modules += (backup, placement, inflight, nodes, peers, workers)
    for module in modules:
        router.include_router(module.router)
    return router
