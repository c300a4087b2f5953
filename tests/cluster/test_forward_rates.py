"""A key's requests-per-minute limit holds across entry nodes: two nodes on one MariaDB share the
budget, a refused request gives its place back, and a box that is no node keeps its own window."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.exc import OperationalError

from llamaman.app import LlamaMan, create_app
from llamaman.cluster.rates import SharedRates
from llamaman.core.config import Settings
from llamaman.testing.mariadb import MariaDBServer
from tests.helpers import fresh_mysql_database

pytestmark = [pytest.mark.mysql, pytest.mark.auth]

SECRET = "two-entry-nodes-share-a-secret"


@pytest.fixture
async def two_nodes(
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    mariadb_server: MariaDBServer,
) -> AsyncIterator[list[httpx.AsyncClient]]:
    started: list[LlamaMan] = []
    clients: list[httpx.AsyncClient] = []
    with fresh_mysql_database(mariadb_server) as url:
        try:
            for name in ("n1", "n2"):
                svc = LlamaMan(
                    make_settings(
                        DATA_DIR=str(tmp_path / name), DATABASE_URL=url, LLAMAMAN_NODE_NAME=name,
                        LLAMAMAN_NODE_URL="http://127.0.0.1:1", LLAMAMAN_NODE_SECRET=SECRET,
                    )
                )  # fmt: skip
                await svc.start()
                # The shared count is kept per calendar minute: a test crossing one would start over.
                svc.cluster.rates.clock = lambda: 1_800_000_030.0
                started.append(svc)
                app = create_app(svc, manage_lifecycle=False)
                clients.append(httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t"))
            _, key = await started[0].auth.keys.create("limited", rpm_limit=3)
            for c in clients:
                c.headers["Authorization"] = f"Bearer {key}"
            # The second node learns of the key from the shared table, as it would on its first use.
            await started[1].auth.keys.load()
            yield clients
        finally:
            for c in clients:
                await c.aclose()
            for svc in started:
                await svc.stop()


async def test_the_per_minute_budget_is_shared_by_every_entry_node(
    two_nodes: list[httpx.AsyncClient],
) -> None:
    n1, n2 = two_nodes
    assert (await n1.get("/v1/models")).status_code == 200
    assert (await n2.get("/v1/models")).status_code == 200
    assert (await n1.get("/v1/models")).status_code == 200
    # Each node alone has counted fewer than three; together they have used the key's three.
    for client in (n2, n1):
        refused = await client.get("/v1/models")
        assert refused.status_code == 429 and int(refused.headers["Retry-After"]) <= 60
        assert "3 requests per minute" in refused.json()["error"]["message"]


async def test_a_refused_request_gives_its_place_back_on_every_node(
    two_nodes: list[httpx.AsyncClient],
) -> None:
    n1, n2 = two_nodes
    body = {"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}
    for _ in range(4):  # refused for the model: each gives its place back, here and in the shared count
        assert (await n1.post("/v1/chat/completions", json=body)).status_code == 404
    for client in (n2, n1, n2):
        assert (await client.get("/v1/models")).status_code == 200
    assert (await n1.get("/v1/models")).status_code == 429


class _DatabaseAway:
    """A database that cannot be reached: every session fails, and each attempt is counted."""

    def __init__(self) -> None:
        self.attempts = 0

    def session(self) -> Any:
        self.attempts += 1
        raise OperationalError("SELECT 1", {}, Exception("can't connect to MySQL server"))


async def test_with_the_database_away_the_shared_counter_steps_aside_for_a_while() -> None:
    db = _DatabaseAway()
    now = [1_000_000.0]
    rates = SharedRates(db, clock=lambda: now[0])  # type: ignore[arg-type]
    assert (await rates.check("k", 1))[0] is None  # the node's own window is the limit meanwhile
    tried = db.attempts
    assert tried >= 1
    for _ in range(5):  # no request waits on a database known to be away
        assert (await rates.check("k", 1))[0] is None
        await rates.refund("k", int(now[0] // 60))
    assert db.attempts == tried
    now[0] += 11
    await rates.check("k", 1)
    assert db.attempts > tried  # tried again once the pause is over
