"""Measured footprints kept in the database, so a restart starts from what loads really took."""

from __future__ import annotations

import asyncio
import time

from sqlmodel import select

from llamaman.core.db import Database
from llamaman.core.tables import ModelFootprint
from llamaman.scheduling.footprint import Footprint


class FootprintStore:
    def __init__(self, db: Database | None) -> None:
        self.db = db

    async def load(self) -> dict[str, Footprint]:
        if self.db is None:
            return {}
        return await asyncio.to_thread(self._load)

    def _load(self) -> dict[str, Footprint]:
        assert self.db is not None
        with self.db.session() as s:
            return {
                row.key: Footprint(
                    row.cpu_only, row.gpu_full, row.host_full, max(row.slots, 1), measured=True
                )
                for row in s.exec(select(ModelFootprint))
            }

    async def save(self, key: str, model_path: str, fp: Footprint) -> None:
        if self.db is not None:
            await asyncio.to_thread(self._save, key, model_path, fp)

    def _save(self, key: str, model_path: str, fp: Footprint) -> None:
        assert self.db is not None
        with self.db.session() as s:
            row = s.get(ModelFootprint, key) or ModelFootprint(
                key=key, model_path=model_path, cpu_only=0, gpu_full=0, host_full=0
            )
            row.cpu_only, row.gpu_full, row.host_full, row.slots = (
                fp.cpu_only,
                fp.gpu_full,
                fp.host_full,
                fp.slots,
            )
            row.updated_at = time.time()
            s.add(row)
            s.commit()
