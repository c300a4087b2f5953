"""A database that is locked or gone answers 503 with Retry-After in the endpoint's dialect, on the
main and proxy apps, never a plain-text 500."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from llamaman.app import LlamaMan, create_app
from llamaman.core.config import Settings
from llamaman.proxy.app import create_proxy_app
from tests.helpers import admin_headers


@pytest.fixture
async def box(make_settings: Callable[..., Settings]) -> AsyncIterator[LlamaMan]:
    services = LlamaMan(make_settings(LLAMA_SERVER_BIN="/nonexistent/llama-server"))
    await services.start()
    try:
        yield services
    finally:
        await services.stop()


@contextmanager
def locked(services: LlamaMan) -> Iterator[None]:
    """Another process's write transaction holding the SQLite file."""
    conn = sqlite3.connect(services.settings.data_dir / "llamaman.db", timeout=1, isolation_level=None)
    try:
        conn.execute("BEGIN EXCLUSIVE")
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()


def client(app: Any, headers: dict[str, str]) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t", headers=headers)


async def test_a_locked_database_answers_503_with_retry_after(box: LlamaMan) -> None:
    headers = await admin_headers(box)
    async with client(create_app(box, manage_lifecycle=False), headers) as main:
        async with client(create_proxy_app(box), headers) as proxy:
            with locked(box):
                started = time.monotonic()
                r = await main.post("/api/settings", json={"max_models": 2})
                assert r.status_code == 503, r.text
                assert r.headers["retry-after"] == "5"
                assert "database" in r.json()["detail"]
                assert time.monotonic() - started < 30
                r = await proxy.post("/api/copy", json={"source": "tiny-a", "destination": "copy-of-a"})
                assert r.status_code == 503, r.text
                assert r.headers["retry-after"] == "5" and "database" in r.json()["error"]
                r = await main.post("/api/api-keys", json={"name": "x"})
                assert r.status_code == 503, r.text
            # Once the lock is gone everything works again.
            assert (await main.post("/api/settings", json={"max_models": 2})).status_code == 200
            r = await proxy.post("/api/copy", json={"source": "tiny-a", "destination": "copy-of-a"})
            assert r.status_code == 200, r.text


async def test_a_database_that_went_away_answers_503(box: LlamaMan) -> None:
    headers = await admin_headers(box)
    async with client(create_app(box, manage_lifecycle=False), headers) as main:
        # The file replaced by a directory: every new connection fails to open it.
        box.db.engine.dispose()
        db = box.settings.data_dir / "llamaman.db"
        moved = db.with_name("moved.db")
        db.rename(moved)
        db.mkdir()
        try:
            r = await main.post("/api/settings", json={"max_models": 3})
            assert r.status_code == 503, r.text
            assert r.headers["retry-after"] == "5"
        finally:
            db.rmdir()
            moved.rename(db)
            box.db.engine.dispose()
