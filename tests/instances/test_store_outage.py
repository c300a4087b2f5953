"""Instance records written while the database is away: the newest state of each is kept and lands
once the database answers again; callers never wait for it, and a removed record stays removed."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

from llamaman.core import record_store
from llamaman.core.db import Database
from llamaman.core.tables import Instance
from llamaman.instances.store import InstanceStore


def _record(state: str, iid: str = "i1") -> Instance:
    return Instance(id=iid, model_path="tiny-a.gguf", model_name="tiny-a", port=8000, state=state)


async def _until(check: Callable[[], bool]) -> None:
    for _ in range(500):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out")


async def test_records_written_while_the_database_is_away_land_with_their_newest_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(record_store, "RETRY_S", 0.05)
    db = Database(f"sqlite:///{tmp_path / 'x.db'}")
    db.migrate()
    current = {"i1", "i2"}
    store = InstanceStore(db, lambda iid: iid in current)
    store.start()
    real_write = store._write
    away = {"on": True}
    tried: list[str] = []

    def write(rec: Any) -> None:
        tried.append(rec.state)
        if away["on"]:
            raise OperationalError("UPDATE", {}, ConnectionRefusedError("gone"))
        real_write(rec)

    monkeypatch.setattr(store, "_write", write)
    store.save(_record("starting"))
    store.save(_record("healthy"))
    store.save(_record("starting", "i2"))
    await asyncio.wait_for(store.flush(), 5)  # callers never wait for the database
    assert await asyncio.to_thread(store.load_all) == []

    current.discard("i2")  # removed while the database was away: it must not come back
    await store.delete("i2")  # the database answers for the delete itself (no row to delete)
    away["on"] = False
    # The row is committed on a worker thread before the writer, back on the loop, forgets it.
    await _until(lambda: len(store.load_all()) == 1 and not store._pending)

    [row] = await asyncio.to_thread(store.load_all)
    assert (row.id, row.state) == ("i1", "healthy")
    assert "healthy" in tried[-2:]
    await store.stop()
    db.dispose()
