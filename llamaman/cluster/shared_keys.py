"""API keys made, changed or revoked on another node, taken into this one's in-memory key table.

Keys are checked in memory on every request (``auth.apikeys.KeyStore``), never in the database, so
requests go on while it is away. Each node re-reads the keys table after its heartbeat: a key made
elsewhere works here, and one revoked elsewhere stops working here, within a few seconds. The
tokens each key used today (what daily quotas read) become the sum over all nodes: what the table
holds plus what this node has not written yet. While the database is away both stay as they were.
"""

from __future__ import annotations

import asyncio
import time

from sqlmodel import col, func, select

from llamaman.auth.apikeys import KeyRecord, KeyStore, today
from llamaman.core.tables import ApiKey, KeyUsage

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
        await self.sync_usage()

    def _rows(self) -> list[ApiKey]:
        with self.keys.db.session() as s:
            return list(s.exec(select(ApiKey)).all())

    def _used(self, day: str) -> dict[str, int]:
        spent = func.sum(col(KeyUsage.prompt_tokens) + col(KeyUsage.completion_tokens))
        with self.keys.db.session() as s:
            rows = s.exec(select(KeyUsage.key_id, spent).where(KeyUsage.day == day).group_by(KeyUsage.key_id))
            return {key_id: int(n or 0) for key_id, n in rows}

    async def sync_usage(self) -> None:
        """Today's tokens per key over every node (the store's own counters, kept in step here)."""
        day = today()
        used = await asyncio.to_thread(self._used, day)
        store = self.keys
        for (key_id, when, _model), (_n, prompt, completion) in store._usage.items():
            if when == day:  # counted here, not written yet
                used[key_id] = used.get(key_id, 0) + prompt + completion
        store._tokens_day, store._tokens_today = day, used

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
