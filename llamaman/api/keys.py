"""/api/api-keys: create (the secret is shown once), list (never the secret), change limits and revoke
API keys. Bodies refuse unknown fields (422 naming the field) so a misspelt limit is never silently
ignored."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from llamaman.api.deps import ServicesDep
from llamaman.auth.apikeys import UnknownKey
from llamaman.core.identity import KeyScope

router = APIRouter(prefix="/api", tags=["api keys"])

_EXPIRES = "When the key stops working: ISO-8601 (UTC unless it says otherwise) or Unix seconds; null = never"
_QUOTA = "Prompt plus completion tokens per UTC day; 0 = no limit"
_PRIORITY = "Served first when requests wait for models to swap in: higher first (-100..100, default 0)"


def _future_timestamp(value: datetime | None) -> float | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    ts = value.timestamp()
    if ts <= datetime.now(UTC).timestamp():
        raise ValueError("must be in the future")
    return ts


class NewKey(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=128)
    scope: KeyScope = Field(
        default="inference",
        description="'inference': model endpoints only; 'admin': manages LlamaMan too (keys, instances, …)",
    )
    allowed_models: list[str] = Field(
        default_factory=list, description="Glob patterns of the models the key may use; empty = all"
    )
    rpm_limit: int = Field(default=0, ge=0, description="Requests per minute; 0 = no limit")
    expires_at: datetime | None = Field(default=None, description=_EXPIRES)
    daily_token_quota: int = Field(default=0, ge=0, le=2**62, description=_QUOTA)
    priority: int = Field(default=0, ge=-100, le=100, description=_PRIORITY)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be blank")
        return v.strip()

    @field_validator("expires_at")
    @classmethod
    def _expiry(cls, v: datetime | None) -> datetime | None:
        _future_timestamp(v)
        return v

    @model_validator(mode="after")
    def _admin_is_unlimited(self) -> NewKey:
        if self.scope == "admin" and any(p.strip() for p in self.allowed_models):
            # A key that manages LlamaMan could make itself a key for every model.
            raise ValueError("allowed_models: an admin key cannot be limited to some models")
        return self


class KeyChanges(BaseModel):
    """The limits of an existing key; fields left out stay as they are."""

    model_config = ConfigDict(extra="forbid")

    rpm_limit: int | None = Field(default=None, ge=0, description="Requests per minute; 0 = no limit")
    expires_at: datetime | None = Field(default=None, description=_EXPIRES)
    daily_token_quota: int | None = Field(default=None, ge=0, le=2**62, description=_QUOTA)
    priority: int | None = Field(default=None, ge=-100, le=100, description=_PRIORITY)

    @field_validator("expires_at")
    @classmethod
    def _expiry(cls, v: datetime | None) -> datetime | None:
        _future_timestamp(v)
        return v

    @field_validator("rpm_limit", "daily_token_quota", "priority")
    @classmethod
    def _not_null(cls, v: int | None) -> int:
        if v is None:
            raise ValueError("must be a whole number (0 = no limit)")
        return v


@router.get("/api-keys")
async def list_keys(services: ServicesDep) -> list[dict[str, Any]]:
    return await services.auth.keys.listing()


@router.post("/api-keys", status_code=201)
async def create_key(body: NewKey, services: ServicesDep) -> dict[str, Any]:
    """The new key with its secret in ``key``: shown this once, only its hash is kept."""
    patterns = [p.strip() for p in body.allowed_models if p.strip()]
    try:
        record, secret = await services.auth.keys.create(
            body.name, patterns, body.rpm_limit, scope=body.scope,
            expires_at=_future_timestamp(body.expires_at), daily_token_quota=body.daily_token_quota,
            priority=body.priority,
        )  # fmt: skip
    except ValueError as exc:
        raise HTTPException(422, f"allowed_models: {exc}") from None
    return {**services.auth.keys.view(record), "key": secret}


@router.patch("/api-keys/{key_id}")
async def change_key(key_id: str, body: KeyChanges, services: ServicesDep) -> dict[str, Any]:
    """Change a key's expiry, daily token quota or request rate; ``"expires_at": null`` = never."""
    changes: dict[str, Any] = body.model_dump(exclude_unset=True)
    if "expires_at" in changes:
        changes["expires_at"] = _future_timestamp(body.expires_at)
    try:
        record = await services.auth.keys.update(key_id, changes)
    except UnknownKey:
        raise HTTPException(404, f"no API key {key_id}") from None
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None
    return services.auth.keys.view(record)


@router.delete("/api-keys/{key_id}")
async def revoke_key(key_id: str, services: ServicesDep) -> dict[str, Any]:
    try:
        record = await services.auth.keys.revoke(key_id)
    except UnknownKey:
        raise HTTPException(404, f"no API key {key_id}") from None
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None
    return services.auth.keys.view(record)
