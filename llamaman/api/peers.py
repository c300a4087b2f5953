"""/api/peers: static peers, OpenAI-compatible servers that are not LlamaMan (llama-swap, an Ollama
box, a plain llama-server) whose models join the lists and are routed to. The key is never shown
back, only whether one is set."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from llamaman.api.deps import ServicesDep

router = APIRouter(prefix="/api", tags=["peers"])

_FILTER = "Comma-separated fnmatch patterns of the peer's models to use ('qwen*,llama-3*'); empty = all"


class NewPeer(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64)
    base_url: str = Field(min_length=1, max_length=1024, description="http://host:port[/v1]")
    api_key: str | None = Field(default=None, max_length=4096, description="Sent as 'Authorization: Bearer'")
    model_filter: str = Field(default="", max_length=1024, description=_FILTER)
    enabled: bool = True


class PeerChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base_url: str | None = Field(default=None, min_length=1, max_length=1024)
    api_key: str | None = Field(default=None, max_length=4096, description="'' clears the key")
    model_filter: str | None = Field(default=None, max_length=1024, description=_FILTER)
    enabled: bool | None = None


@router.get("/peers")
async def list_peers(services: ServicesDep) -> list[dict[str, Any]]:
    await services.peers.reload()
    return [p.public() for p in services.peers.views()]


@router.post("/peers", status_code=201)
async def add_peer(body: NewPeer, services: ServicesDep) -> dict[str, Any]:
    b = body
    return (await services.peers.create(b.name, b.base_url, b.api_key, b.model_filter, b.enabled)).public()


@router.get("/peers/{name}")
async def get_peer(name: str, services: ServicesDep) -> dict[str, Any]:
    await services.peers.reload()
    return services.peers.get(name).public()


@router.put("/peers/{name}")
async def change_peer(name: str, body: PeerChange, services: ServicesDep) -> dict[str, Any]:
    changes = body.model_dump(exclude_unset=True)
    if changes.get("base_url") is None:
        changes.pop("base_url", None)
    if changes.get("model_filter") is None:
        changes.pop("model_filter", None)
    if changes.get("enabled") is None:
        changes.pop("enabled", None)
    return (await services.peers.update(name, changes)).public()


@router.delete("/peers/{name}")
async def delete_peer(name: str, services: ServicesDep) -> dict[str, Any]:
    await services.peers.delete(name)
    return {"deleted": name}
