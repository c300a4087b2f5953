"""API keys across nodes: a key made on one node works on another, and one revoked there stops
working here within seconds, while each request is still checked in memory only."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from llamaman.app import LlamaMan
from llamaman.auth.apikeys import KeyStore
from llamaman.cluster.shared_keys import SharedKeys
from llamaman.core.config import Settings
from llamaman.core.db import Database
from tests.helpers import asgi

SECRET = "k" * 20


async def test_a_key_made_and_revoked_on_one_store_reaches_the_other(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'keys.db'}")
    db.migrate()
    here, there = KeyStore(db, env_keys="env-key-of-this-box"), KeyStore(db)
    await here.load()
    await there.load()
    sync = SharedKeys(here)

    record, key = await there.create("made-there")
    assert here.verify(key) is None
    assert await sync.sync()
    assert here.verify(key) == record
    assert here.verify("env-key-of-this-box") is not None  # the environment's keys stay

    await there.revoke(record.id)
    assert await sync.sync()
    got = here.verify(key)
    assert got is not None and got.revoked
    db.dispose()


async def test_todays_tokens_of_a_key_add_up_over_the_nodes_for_its_quota(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'keys.db'}")
    db.migrate()
    here, there = KeyStore(db), KeyStore(db)
    await there.load()
    record, _ = await there.create("quota", daily_token_quota=100)
    await here.load()
    sync = SharedKeys(here)

    there.record_usage(record.id, "tiny-a", 40, 20)
    await there.flush()
    here.record_usage(record.id, "tiny-b", 30, 5)  # not written yet
    await sync.sync_usage()

    assert here.tokens_today(record.id) == 95
    assert here.quota_wait(record.identity()) is None
    there.record_usage(record.id, "tiny-a", 5, 0)
    await there.flush()
    await sync.sync_usage()
    assert here.tokens_today(record.id) == 100
    assert here.quota_wait(record.identity()) is not None
    db.dispose()


async def test_a_key_made_here_while_the_table_is_read_is_not_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = Database(f"sqlite:///{tmp_path / 'keys.db'}")
    db.migrate()
    here = KeyStore(db)
    await here.load()
    sync = SharedKeys(here)
    read = sync._rows
    made: list[str] = []

    def read_then_create() -> Any:
        rows = read()  # the read misses the key made just after it
        made.append(asyncio.run_coroutine_threadsafe(here.create("racing"), loop).result()[1])
        return rows

    loop = asyncio.get_running_loop()
    monkeypatch.setattr(sync, "_rows", read_then_create)
    assert not await sync.sync()
    monkeypatch.undo()

    assert here.verify(made[0]) is not None
    assert await sync.sync() and here.verify(made[0]) is not None
    db.dispose()


@pytest.fixture
async def two_nodes(make_settings: Callable[..., Settings], tmp_path: Path) -> AsyncIterator[list[LlamaMan]]:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    nodes = [
        LlamaMan(
            make_settings(
                DATABASE_URL=url,
                DATA_DIR=str(tmp_path / name),
                LLAMAMAN_NODE_NAME=name,
                LLAMAMAN_NODE_URL=f"http://127.0.0.1:1/{name}",
                LLAMAMAN_NODE_SECRET=SECRET,
                LLAMAMAN_REQUIRE_AUTH="true",
            )
        )
        for name in ("alpha", "beta")
    ]
    for node in nodes:
        await node.start()
    try:
        yield nodes
    finally:
        for node in nodes:
            await node.stop()


async def _status_until(client: Any, headers: dict[str, str], want: set[int], timeout: float) -> float:
    start = time.monotonic()
    while True:
        status = (await client.get("/v1/models", headers=headers)).status_code
        if status in want:
            return time.monotonic() - start
        assert time.monotonic() - start < timeout, f"still {status} after {timeout} s"
        await asyncio.sleep(0.1)


@pytest.mark.auth
async def test_a_key_revoked_on_one_node_is_refused_by_the_other_within_seconds(
    two_nodes: list[LlamaMan],
) -> None:
    alpha, beta = two_nodes
    record, key = await alpha.auth.keys.create("roaming")
    headers = {"Authorization": f"Bearer {key}"}

    async with asgi(beta, "proxy") as client:
        await _status_until(client, headers, {200}, timeout=10)
        await alpha.auth.keys.revoke(record.id)
        took = await _status_until(client, headers, {401, 403}, timeout=10)

    assert took < 5
