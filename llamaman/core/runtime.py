"""Settings changed at run time from the UI or REST, kept in the database.

Environment settings (``config.Settings``) give the defaults; what a user saves here wins and
takes effect at once, without a restart.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from llamaman.core.config import Settings
from llamaman.core.db import Database
from llamaman.core.events import EventBus
from llamaman.core.memory_limit import parse_memory_limit
from llamaman.core.tables import AppSetting

_KEY = "runtime"


class RuntimeSettings(BaseModel):
    # No NaN/Infinity and upper bounds everywhere: a setting is a number a user could mean.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    require_auth: bool = Field(default=True, strict=True, description="Model endpoints need an API key")
    max_models: int = Field(
        default=0, ge=0, le=1000, description="Models the proxy keeps loaded; 0 = no limit"
    )
    memory_limit: str | None = Field(
        default=None,
        max_length=512,
        description="Memory models may use per device, e.g. cpu=48GiB,gpu0=22GiB; empty = free at start",
    )
    idle_timeout_min: float = Field(
        default=0, ge=0, le=525_600, description="Proxy-started models sleep after this; 0 = never"
    )
    evict_manual: bool = Field(
        default=False, strict=True, description="API traffic may evict manually launched instances"
    )
    cleanup_hours: float = Field(
        default=0, ge=0, le=87_600, description="Forget finished downloads / stopped records after"
    )
    download_retries: int = Field(
        default=3, ge=0, le=100, description="Automatic retries of a failed download"
    )
    download_speed_limit_mbps: float = Field(
        default=0, ge=0, le=1_000_000, description="Global download limit; 0 = none"
    )
    hf_token: str | None = Field(
        default=None,
        max_length=1024,
        pattern=r"^[\x21-\x7e]*$",
        description="Hugging Face token for downloads",
    )
    activity_retention: int = Field(
        default=10000, ge=100, le=100_000_000, description="Request-log rows kept"
    )

    @field_validator("memory_limit")
    @classmethod
    def _memory_limit(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        parse_memory_limit(v)  # a ValueError names what is wrong; pydantic answers it as 422
        return v.strip()

    def public(self) -> dict[str, Any]:
        out = self.model_dump()
        if out.get("hf_token"):
            out["hf_token"] = "***"
        return out


class RuntimeConfig:
    """Owner of the runtime settings: load once, update atomically, announce changes."""

    def __init__(self, settings: Settings, db: Database, events: EventBus) -> None:
        self.db = db
        self.events = events
        self.defaults = RuntimeSettings(
            max_models=settings.max_models,
            memory_limit=settings.memory_limit,
            idle_timeout_min=settings.idle_timeout,
            hf_token=settings.hf_token,
        )
        self.current = self.defaults
        # Only what a user saved is stored; everything else keeps following the environment (and
        # an HF_TOKEN from the environment is never copied into the database).
        self._saved: dict[str, Any] = {}

    async def load(self) -> RuntimeSettings:
        stored = await asyncio.to_thread(self._read)
        self._saved = stored or {}
        merged = {**self.defaults.model_dump(), **self._saved}
        try:
            self.current = RuntimeSettings(**merged)
        except ValidationError:
            self.current, self._saved = self.defaults, {}
        return self.current

    def _read(self) -> dict[str, Any] | None:
        with self.db.session() as s:
            row = s.get(AppSetting, _KEY)
            return dict(row.value) if row is not None and isinstance(row.value, dict) else None

    async def update(self, changes: dict[str, Any]) -> RuntimeSettings:
        """Validate and store ``changes``; raises ValidationError with nothing stored on bad input."""
        if changes.get("hf_token") == "***":
            changes = {k: v for k, v in changes.items() if k != "hf_token"}  # the redacted echo
        saved = {**self._saved, **changes}
        new = RuntimeSettings(**{**self.defaults.model_dump(), **saved})
        saved = new.model_dump(include=set(saved))
        await asyncio.to_thread(self._write, saved)
        old, self.current, self._saved = self.current, new, saved
        self.events.publish(
            "settings.changed", changed=sorted(k for k in changes if getattr(old, k) != getattr(new, k))
        )
        return new

    def _write(self, value: dict[str, Any]) -> None:
        with self.db.session() as s:
            row = s.get(AppSetting, _KEY) or AppSetting(key=_KEY)
            row.value = value
            s.add(row)
            s.commit()
