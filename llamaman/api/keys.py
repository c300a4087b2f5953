"""/api/api-keys: create (the secret is shown once), list (never the secret) and revoke API keys."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field

from llamaman.api.deps import ServicesDep
from llamaman.apikeys import UnknownKey

router = APIRouter(prefix="/api", tags=["api keys"])


class NewKey(BaseModel):
    name: str = Field(min_length=1, max_length=128)
    allowed_models: list[str] = Field(
        default_factory=list, description="Glob patterns of the models the key may use; empty = all"
    )
    rpm_limit: int = Field(default=0, ge=0, description="Requests per minute; 0 = no limit")


@router.get("/api-keys")
async def list_keys(services: ServicesDep) -> list[dict[str, Any]]:
    return await services.auth.keys.listing()


@router.post("/api-keys", status_code=201)
async def create_key(body: NewKey, services: ServicesDep) -> dict[str, Any]:
    """The new key with its secret in ``key``: shown this once, only its hash is kept."""
    patterns = [p.strip() for p in body.allowed_models if p.strip()]
    record, secret = await services.auth.keys.create(body.name.strip(), patterns, body.rpm_limit)
    return {**services.auth.keys.view(record), "key": secret}


@router.delete("/api-keys/{key_id}")
async def revoke_key(key_id: str, services: ServicesDep) -> dict[str, Any]:
    try:
        record = await services.auth.keys.revoke(key_id)
    except UnknownKey:
        raise HTTPException(404, f"no API key {key_id}") from None
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None
    return services.auth.keys.view(record)
