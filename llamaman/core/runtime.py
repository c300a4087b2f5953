"""Settings changed at run time from the UI or REST, kept in the database.

Precedence, for every setting: an environment variable or command-line flag that sets it wins
(and the setting cannot be changed at run time then); otherwise what a user saved; otherwise the
default. ``sources()`` says which of ``flag``, ``env``, ``saved`` and ``default`` each value came
from. Saved values take effect at once, without a restart.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from llamaman.core.config import Settings
from llamaman.core.db import Database
from llamaman.core.errors import Conflict
from llamaman.core.events import EventBus
from llamaman.core.memory_limit import parse_memory_limit
from llamaman.core.tables import AppSetting

_KEY = "runtime"
# Runtime setting → the environment setting (``config.Settings`` field) that can pin it, where the
# names differ; any other runtime setting is pinned by the Settings field of its own name, if any.
_PINNED_BY = {"idle_timeout_min": "idle_timeout"}


class SettingFixed(Conflict):
    """A change to a setting the environment or a command-line flag pins."""


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
        # name → (value, "env" | "flag"): what the operator set on purpose outranks anything saved.
        self.fixed: dict[str, tuple[Any, str]] = {}
        for name in RuntimeSettings.model_fields:
            field = _PINNED_BY.get(name, name)
            if field in Settings.model_fields and (found := settings.explicit(field)) is not None:
                self.fixed[name] = found
        self._env_names = {name: Settings.env_name(_PINNED_BY.get(name, name)) for name in self.fixed}
        self.defaults = RuntimeSettings(
            max_models=settings.max_models,
            memory_limit=settings.memory_limit,
            idle_timeout_min=settings.idle_timeout,
            hf_token=settings.hf_token,
            **{
                k: v
                for k, (v, _) in self.fixed.items()
                if k not in ("max_models", "memory_limit", "idle_timeout_min", "hf_token")
            },
        )
        self.current = self.defaults
        # Only what a user saved is stored; everything else keeps following the environment (and
        # an HF_TOKEN from the environment is never copied into the database).
        self._saved: dict[str, Any] = {}

    def pinned_by(self) -> dict[str, str]:
        """The environment variable (or its flag) behind each pinned setting."""
        return dict(self._env_names)

    def _pinned(self) -> dict[str, Any]:
        return {name: value for name, (value, _) in self.fixed.items()}

    def sources(self) -> dict[str, str]:
        """Where each setting's current value comes from: ``flag``, ``env``, ``saved`` or ``default``."""
        return {
            name: self.fixed[name][1] if name in self.fixed else "saved" if name in self._saved else "default"
            for name in RuntimeSettings.model_fields
        }

    async def load(self) -> RuntimeSettings:
        stored = await asyncio.to_thread(self._read)
        self._saved = stored or {}
        merged = {**self.defaults.model_dump(), **self._saved, **self._pinned()}
        try:
            self.current = RuntimeSettings(**merged)
        except ValidationError:
            self.current, self._saved = (
                RuntimeSettings(**{**self.defaults.model_dump(), **self._pinned()}),
                {},
            )
        return self.current

    def _refuse_pinned(self, changes: dict[str, Any]) -> dict[str, Any]:
        """``changes`` without the pinned settings they leave as they are; a real change to one is
        refused, naming what pins it (a form sends every field back, changed or not)."""
        kept = {}
        for name, value in changes.items():
            if name not in self.fixed:
                kept[name] = value
            elif value != getattr(self.current, name):
                how = "a command-line flag" if self.fixed[name][1] == "flag" else "the environment"
                raise SettingFixed(
                    f"{name} is fixed by {how} ({self._env_names[name]}): change it there and restart "
                    "LlamaMan to change it"
                )
        return kept

    def _read(self) -> dict[str, Any] | None:
        with self.db.session() as s:
            row = s.get(AppSetting, _KEY)
            return dict(row.value) if row is not None and isinstance(row.value, dict) else None

    async def update(self, changes: dict[str, Any]) -> RuntimeSettings:
        """Validate and store ``changes``; raises ValidationError with nothing stored on bad input,
        SettingFixed for a change to a setting the environment or a flag pins."""
        if changes.get("hf_token") == "***":
            changes = {k: v for k, v in changes.items() if k != "hf_token"}  # the redacted echo
        changes = self._refuse_pinned(changes)
        saved = {**self._saved, **changes}
        new = RuntimeSettings(**{**self.defaults.model_dump(), **saved, **self._pinned()})
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
