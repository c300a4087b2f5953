"""Saved launch settings per model (keyed by the model's path relative to MODELS_DIR)."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Literal

from pydantic import BaseModel, Field
from sqlmodel import select

from llamaman.core.db import Database
from llamaman.core.events import EventBus
from llamaman.core.tables import Preset
from llamaman.instances.launch import LaunchSettings


class PresetSettings(LaunchSettings):
    """A preset is launch settings without the model (the key names it) and without a fixed port."""

    model_path: str = ""
    # Where the proxy may put this model when it loads it on demand (see scheduling/placement.py).
    placement: Literal["auto", "gpu_only", "cpu_only"] | None = Field(
        default=None,
        description="auto: one GPU, a split over GPUs, fewer layers on GPU, then RAM; gpu_only; cpu_only",
    )


def validate_preset(body: dict[str, Any]) -> dict[str, Any]:
    """Validate preset values (raises pydantic.ValidationError); returns only what was given."""
    body = {k: v for k, v in body.items() if k not in ("model_path",)}
    parsed = PresetSettings(**body)
    return parsed.model_dump(include=set(body.keys()), exclude_none=False)


class PresetStore:
    def __init__(self, db: Database, events: EventBus) -> None:
        self.db = db
        self.events = events

    async def all(self) -> dict[str, dict[str, Any]]:
        return await asyncio.to_thread(self._all)

    def _all(self) -> dict[str, dict[str, Any]]:
        with self.db.session() as s:
            return {p.model_path: dict(p.settings or {}) for p in s.exec(select(Preset))}

    async def get(self, model_path: str) -> dict[str, Any] | None:
        return await asyncio.to_thread(self._get, model_path)

    def _get(self, model_path: str) -> dict[str, Any] | None:
        with self.db.session() as s:
            row = s.get(Preset, model_path)
            return dict(row.settings or {}) if row is not None else None

    async def put(self, model_path: str, values: dict[str, Any], *, merge: bool = False) -> dict[str, Any]:
        clean = validate_preset(values)
        saved = await asyncio.to_thread(self._put, model_path, clean, merge)
        self.events.publish("preset.saved", model_path=model_path, settings=saved)
        return saved

    def _put(self, model_path: str, values: dict[str, Any], merge: bool) -> dict[str, Any]:
        with self.db.session() as s:
            row = s.get(Preset, model_path)
            if row is None:
                row = Preset(model_path=model_path, settings=values)
            elif merge:
                # Restoring a backup: keep what the user already has, add what is missing.
                row.settings = {**values, **(row.settings or {})}
            else:
                row.settings = values
            row.updated_at = time.time()
            s.add(row)
            s.commit()
            return dict(row.settings)

    async def delete(self, model_path: str) -> bool:
        ok = await asyncio.to_thread(self._delete, model_path)
        if ok:
            self.events.publish("preset.deleted", model_path=model_path)
        return ok

    def _delete(self, model_path: str) -> bool:
        with self.db.session() as s:
            row = s.get(Preset, model_path)
            if row is None:
                return False
            s.delete(row)
            s.commit()
            return True


class PresetOut(BaseModel):
    model_path: str
    settings: dict[str, Any]
