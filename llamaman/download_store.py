"""Download records in the database: ordered background writes, loading, deleting, model sources."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from sqlmodel import select

from llamaman.db import Database
from llamaman.tables import Download, ModelSource

log = logging.getLogger(__name__)


class DownloadStore:
    def __init__(self, db: Database, known: Callable[[str], bool]) -> None:
        self.db = db
        # Writes of a record removed meanwhile are dropped instead of bringing it back.
        self.known = known
        self._writes: asyncio.Queue[Download | None] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._writer = asyncio.create_task(self._write_loop())

    async def stop(self) -> None:
        if self._writer is not None:
            self._writes.put_nowait(None)
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
            self._writer = None

    def save(self, record: Download) -> None:
        # One writer task keeps writes in order without blocking the event loop.
        self._writes.put_nowait(record.model_copy())

    async def flush(self) -> None:
        if self._writer is not None and not self._writer.done():
            await self._writes.join()

    async def _write_loop(self) -> None:
        while True:
            rec = await self._writes.get()
            try:
                if rec is None:
                    return
                await asyncio.to_thread(self._write, rec)
            except Exception:
                log.exception("could not store download %s", getattr(rec, "id", "?"))
            finally:
                self._writes.task_done()

    def _write(self, rec: Download) -> None:
        if not self.known(rec.id):
            return
        with self.db.session() as s:
            s.merge(rec)
            s.commit()

    async def delete(self, download_id: str) -> None:
        await self.flush()
        await asyncio.to_thread(self._delete, download_id)

    def _delete(self, download_id: str) -> None:
        with self.db.session() as s:
            row = s.get(Download, download_id)
            if row is not None:
                s.delete(row)
                s.commit()

    def load(self) -> list[Download]:
        with self.db.session() as s:
            return list(s.exec(select(Download).order_by(Download.created_at)))  # type: ignore[arg-type]

    def put_sources(self, sources: list[ModelSource]) -> None:
        """Remember where model files came from (blocking)."""
        with self.db.session() as s:
            for src in sources:
                s.merge(src)
            s.commit()
