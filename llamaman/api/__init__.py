"""REST management API (JSON). Paths and bodies follow the original LlamaMan."""

from fastapi import APIRouter

from llamaman.api import instances, models, presets, system


def build_router() -> APIRouter:
    router = APIRouter()
    for module in (instances, models, presets, system):
        router.include_router(module.router)
    return router
