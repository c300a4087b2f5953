"""API keys made, changed or revoked on another node, taken into this one's in-memory key table.

Keys are checked in memory on every request (``auth.apikeys.KeyStore``), never in the database, so
requests go on while it is away. Each node re-reads the keys table after its heartbeat: a key made
elsewhere works here, and one revoked elsewhere stops working here, within a few seconds. While the
database is away the keys stay as they were last read.
"""

from __future__ import annotations

import asyncio
import time

from sqlmodel import select

from llamaman.auth.apikeys import KeyRecord, KeyStore
from llamaman.core.tables import ApiKey

# Seconds between two reads of the keys table: how long a key revoked elsewhere may still work here.
SYNC_EVERY_S = 2.0


class SharedKeys:
    def __init__(self, keys: KeyStore, every: float = SYNC_EVERY_S) -> None:
        self.keys = keys
        self.every = every
        self._read_at = 0.0

    async def __call__(self) -> None:
        if time.monotonic() - self._read_at < self.every:
            return
        self._read_at = time.monotonic()
        await self.sync()

    def _rows(self) -> list[ApiKey]:
        with self.keys.db.session() as s:
            return list(s.exec(select(ApiKey)).all())

    async def sync(self) -> bool:
        """Take the table's keys; False when a key changed here during the read (a create or a
        revoke whose row the read may have missed): the next round takes them instead."""
        before = dict(self.keys.by_id)
        rows = await asyncio.to_thread(self._rows)
        if self.keys.by_id != before:
            return False
        # Keys from the environment have no row: each node keeps its own.
        records = [r for r in self.keys.by_id.values() if r.source != "db"]
        records += [KeyRecord.of(r) for r in rows]
        by_id = {r.id: r for r in records}
        if by_id != self.keys.by_id:
            self.keys.by_hash = {r.key_hash: r for r in records}
            self.keys.by_id = by_id
        return True
