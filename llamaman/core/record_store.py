"""Records of one table written in order by one background task, so callers on the event loop never
wait for the database and a later state never lands before an earlier one.

Nodes sharing one database each keep their own rows (the table's ``node`` column): a store given a
node name stamps it on what it writes and loads only that node's rows; a standalone box (no name)
keeps to the rows without one.

A write that finds the database away (restarting, unreachable) is kept, the newest state of each
record, and written again once it answers; the queue goes on meanwhile, so callers never wait."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from sqlmodel import SQLModel, col, select, update

from llamaman.core.db import Database, is_unreachable

log = logging.getLogger(__name__)
R = TypeVar("R", bound=SQLModel)
# Seconds between two tries of the writes that found the database away.
RETRY_S = 1.0


class RecordStore(Generic[R]):
    def __init__(
        self, db: Database, table: type[R], is_current: Callable[[str], bool], node: str | None = None
    ) -> None:
        self.db = db
        self.table = table
        self.node = node
        # A write for a record removed meanwhile is dropped, or it would come back to life.
        self.is_current = is_current
        self._writes: asyncio.Queue[R | None] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        # Records whose write found the database away, by id: written when it answers again.
        self._pending: dict[str, R] = {}

    def start(self) -> None:
        self._writer = asyncio.create_task(self._write_loop())

    async def stop(self) -> None:
        await self.flush()
        if self._writer is not None:
            self._writes.put_nowait(None)
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
            self._writer = None

    def save(self, record: R) -> None:
        if self.node is not None and getattr(record, "node", None) is None:
            record.node = self.node  # type: ignore[attr-defined]
        self._writes.put_nowait(record.model_copy())

    async def flush(self) -> None:
        """Wait until every queued write is in the database."""
        if self._writer is not None and not self._writer.done():
            await self._writes.join()

    async def _write_loop(self) -> None:
        while True:
            try:
                # With writes waiting for the database, look again every RETRY_S even when idle.
                rec = await asyncio.wait_for(self._writes.get(), RETRY_S if self._pending else None)
            except TimeoutError:
                await self._retry_pending()
                continue
            try:
                if rec is None:
                    return
                if await self._store(rec) and self._pending:
                    await self._retry_pending()
            except Exception:
                log.exception("could not store %s %s", self.table.__name__, getattr(rec, "id", "?"))
            finally:
                self._writes.task_done()

    async def _store(self, rec: R) -> bool:
        """Write ``rec``; while the database is away keep it (the newest state of each record wins:
        each write is the whole record) and say False."""
        rid = rec.id  # type: ignore[attr-defined]
        try:
            await asyncio.to_thread(self._write, rec)
        except Exception as exc:
            if not is_unreachable(exc):
                raise
            if not self._pending:
                log.warning("%s records wait for the database: %s", self.table.__name__, exc)
            self._pending[rid] = rec
            return False
        self._pending.pop(rid, None)
        return True

    async def _retry_pending(self) -> None:
        for rec in list(self._pending.values()):
            if not await self._store(rec):
                return
        log.info("%s records written again: the database is back", self.table.__name__)

    def _write(self, rec: R) -> None:
        if not self.is_current(rec.id):  # type: ignore[attr-defined]
            return
        with self.db.session() as s:
            s.merge(rec)
            s.commit()

    async def delete(self, record_id: str) -> None:
        await self.flush()
        self._pending.pop(record_id, None)
        await asyncio.to_thread(self._delete, record_id)

    def _delete(self, record_id: str) -> None:
        with self.db.session() as s:
            row = s.get(self.table, record_id)
            if row is not None:
                s.delete(row)
                s.commit()

    def load_all(self) -> list[R]:
        """Every record of this node, oldest first (blocking)."""
        created: Any = self.table.created_at  # type: ignore[attr-defined]
        node: Any = col(self.table.node)  # type: ignore[attr-defined]
        with self.db.session() as s:
            if self.node is not None:
                self._claim_unowned(s, node)
            mine = node == self.node if self.node is not None else node.is_(None)
            return list(s.exec(select(self.table).where(mine).order_by(created)))

    def _claim_unowned(self, s: Any, node: Any) -> None:
        """Rows from before this box was a node become ours if no other node took them first: one
        UPDATE, so of two nodes starting together exactly one restores each row."""
        claimed = s.exec(update(self.table).where(node.is_(None)).values(node=self.node))
        s.commit()
        if claimed.rowcount:
            what = self.table.__name__
            log.info("took %d %s record(s) without a node as %s's", claimed.rowcount, what, self.node)

    async def load(self) -> list[R]:
        return await asyncio.to_thread(self.load_all)
