"""Two nodes on one MariaDB: each restores and adopts only its own instances and resumes only its
own downloads; rows from before the box was a node are taken by exactly one of them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlmodel import select

from llamaman.app import LlamaMan
from llamaman.core.config import Settings
from llamaman.core.db import Database
from llamaman.core.state import InstanceState
from llamaman.core.tables import Download, Instance
from llamaman.instances.launch import LaunchSettings
from llamaman.testing.mariadb import MariaDBServer
from tests.helpers import fresh_mysql_database

pytestmark = pytest.mark.mysql
SECRET = "o" * 20
S = InstanceState


@pytest.fixture
def shared_url(mariadb_server: MariaDBServer) -> Iterator[str]:
    """An empty database of its own on the shared server."""
    with fresh_mysql_database(mariadb_server) as url:
        yield url


@pytest.fixture
def node_settings(
    make_settings: Callable[..., Settings], shared_url: str, llama_server_bin: str, tmp_path: Path
) -> Callable[[str], Settings]:
    made: dict[str, Settings] = {}

    def make(name: str) -> Settings:
        # Kept per name: a node that restarts keeps its folders and its port pools.
        if name not in made:
            made[name] = make_settings(
                DATABASE_URL=shared_url,
                DATA_DIR=str(tmp_path / name),
                LLAMA_SERVER_BIN=llama_server_bin,
                LLAMAMAN_NODE_NAME=name,
                LLAMAMAN_NODE_URL=f"http://127.0.0.1:1/{name}",
                LLAMAMAN_NODE_SECRET=SECRET,
            )
        return made[name]

    return make


def _rows(url: str, table: type[Instance] | type[Download]) -> list[Instance] | list[Download]:
    db = Database(url)
    try:
        with db.session() as s:
            return list(s.exec(select(table)).all())  # type: ignore[arg-type]
    finally:
        db.dispose()


def _add(url: str, *rows: Instance | Download) -> None:
    db = Database(url)
    try:
        with db.session() as s:
            s.add_all(rows)
            s.commit()
    finally:
        db.dispose()


def _stopped_instance(port: int, node: str | None) -> Instance:
    return Instance(
        model_path="tiny-b.gguf",
        model_name="tiny-b",
        port=port,
        state="stopped",
        desired_running=False,
        node=node,
    )


async def _start_together(*nodes: LlamaMan) -> None:
    # Both on an empty database: the migration runs once, under MariaDB's named lock.
    await asyncio.gather(*(n.start() for n in nodes))


async def test_each_node_brings_back_only_its_own_instance_after_both_restart(
    node_settings: Callable[[str], Settings], shared_url: str
) -> None:
    alpha, beta = LlamaMan(node_settings("alpha")), LlamaMan(node_settings("beta"))
    await _start_together(alpha, beta)
    try:
        served = await alpha.supervisor.launch(LaunchSettings(model_path="tiny-a.gguf", ctx_size=512))
        assert await served.proc.wait_for({S.HEALTHY, S.FAILED}, timeout=60) == S.HEALTHY, served.proc.error
        await alpha.supervisor.flush()
    finally:
        await asyncio.gather(alpha.stop(), beta.stop())
    # beta has a record of its own, one not meant to run.
    kept = _stopped_instance(node_settings("beta").port_range_start, "beta")
    _add(shared_url, kept)

    owners = {r.id: r.node for r in _rows(shared_url, Instance)}
    assert owners == {served.id: "alpha", kept.id: "beta"}

    alpha, beta = LlamaMan(node_settings("alpha")), LlamaMan(node_settings("beta"))
    await _start_together(alpha, beta)
    try:
        assert [m.id for m in alpha.supervisor.list()] == [served.id]
        assert [m.id for m in beta.supervisor.list()] == [kept.id]
        [back] = alpha.supervisor.list()
        assert await back.proc.wait_for({S.HEALTHY, S.FAILED}, timeout=60) == S.HEALTHY, back.proc.error
        assert beta.supervisor.list()[0].state == S.STOPPED
    finally:
        await asyncio.gather(alpha.stop(), beta.stop())
    # One server ran for the instance; nobody started a second.
    assert len(_rows(shared_url, Instance)) == 2


async def test_rows_without_a_node_are_taken_once_by_the_first_node_to_start(
    node_settings: Callable[[str], Settings], shared_url: str
) -> None:
    db = Database(shared_url)
    db.migrate()
    base = node_settings("alpha").port_range_start
    legacy = [_stopped_instance(base + i, None) for i in range(3)]
    done = Download(repo_id="org/done", status="completed", files=["x.gguf"], finished_at=1.0)
    db.dispose()
    _add(shared_url, *legacy, done)

    alpha, beta = LlamaMan(node_settings("alpha")), LlamaMan(node_settings("beta"))
    await _start_together(alpha, beta)
    try:
        seen = {n: {m.id for m in node.supervisor.list()} for n, node in (("alpha", alpha), ("beta", beta))}
        downloads = {n: set(node.downloads.jobs) for n, node in (("alpha", alpha), ("beta", beta))}
    finally:
        await asyncio.gather(alpha.stop(), beta.stop())

    ids = {r.id for r in legacy}
    # All went to one node: neither restored what the other did.
    assert sorted([seen["alpha"], seen["beta"]], key=len) == [set(), ids]
    taker = "alpha" if seen["alpha"] else "beta"
    assert {r.id: r.node for r in _rows(shared_url, Instance)} == dict.fromkeys(ids, taker)
    assert downloads[taker] == {done.id} and downloads["beta" if taker == "alpha" else "alpha"] == set()
    assert [d.node for d in _rows(shared_url, Download)] == [taker]


async def test_a_download_record_is_stamped_with_its_node(
    node_settings: Callable[[str], Settings], shared_url: str
) -> None:
    from llamaman.core.errors import UpstreamFailed

    alpha = LlamaMan(node_settings("alpha"))
    await alpha.start()
    try:
        job = alpha.downloads.record_failure("org/repo", UpstreamFailed("the hub is down"))
        assert job is not None
        await alpha.downloads.store.flush()
    finally:
        await alpha.stop()

    assert [(d.id, d.node) for d in _rows(shared_url, Download)] == [(job.id, "alpha")]


async def test_four_nodes_migrating_an_empty_database_at_once_all_start(shared_url: str) -> None:
    databases = [Database(shared_url) for _ in range(4)]
    try:
        # Each waits for the one migrating and must then find every revision committed.
        await asyncio.gather(*(asyncio.to_thread(db.migrate) for db in databases))
    finally:
        for db in databases:
            db.dispose()
    assert _rows(shared_url, Instance) == []


async def test_another_nodes_instance_on_a_port_of_ours_leaves_that_port_free_here(
    node_settings: Callable[[str], Settings], shared_url: str
) -> None:
    # Ports are per box: beta's instance on the number that is alpha's first port takes nothing here.
    first = node_settings("alpha").port_range_start
    db = Database(shared_url)
    db.migrate()
    db.dispose()
    _add(shared_url, _stopped_instance(first, "beta"))

    alpha = LlamaMan(node_settings("alpha"))
    await alpha.start()
    try:
        assert alpha.supervisor.list() == []
        assert alpha.supervisor.next_port() == first
    finally:
        await alpha.stop()
