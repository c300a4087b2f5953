"""Instance records in the database, written in order through one queue off the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from sqlmodel import select

from llamaman.db import Database
from llamaman.tables import Instance

log = logging.getLogger(__name__)


class InstanceStore:
    def __init__(self, db: Database, is_current: Callable[[str], bool]) -> None:
        self.db = db
        # A write for an instance removed meanwhile is dropped, or it would come back to life.
        self.is_current = is_current
        self._writes: asyncio.Queue[Instance | None] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._writer = asyncio.create_task(self._write_loop())

    async def stop(self) -> None:
        await self.flush()
        if self._writer:
            self._writes.put_nowait(None)
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer

    def save(self, record: Instance) -> None:
        self._writes.put_nowait(record.model_copy())

    async def _write_loop(self) -> None:
        while True:
            rec = await self._writes.get()
            try:
                if rec is None:
                    return
                await asyncio.to_thread(self._write, rec)
            except Exception:
                log.exception("could not store instance %s", getattr(rec, "id", "?"))
            finally:
                self._writes.task_done()

    async def flush(self) -> None:
        """Wait until every queued write is in the database."""
        if self._writer is not None and not self._writer.done():
            await self._writes.join()

    def _write(self, rec: Instance) -> None:
        with self.db.session() as s:
            if not self.is_current(rec.id):
                return
            s.merge(rec)
            s.commit()

    async def delete(self, instance_id: str) -> None:
        await self.flush()
        await asyncio.to_thread(self._delete, instance_id)

    def _delete(self, instance_id: str) -> None:
        with self.db.session() as s:
            row = s.get(Instance, instance_id)
            if row is not None:
                s.delete(row)
                s.commit()

    async def load(self) -> list[Instance]:
        return await asyncio.to_thread(self._load)

    def _load(self) -> list[Instance]:
        with self.db.session() as s:
            return list(s.exec(select(Instance).order_by(Instance.created_at)))  # type: ignore[arg-type]
