"""Storage on SQLite and on a real MariaDB: migrations, every table, the stores built on them.

MariaDB runs once per test session (``llamaman.testing.mariadb``); each test gets a database of its
own. Without a MariaDB server the MariaDB variants are skipped, unless LLAMAMAN_REQUIRE_MYSQL says
they must run.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from pydantic import ValidationError
from sqlalchemy import inspect
from sqlalchemy.exc import IntegrityError
from sqlmodel import SQLModel, select

from llamaman.app import LlamaMan
from llamaman.core.config import Settings
from llamaman.core.db import MIGRATIONS_DIR, Database
from llamaman.core.events import EventBus
from llamaman.core.runtime import RuntimeConfig
from llamaman.core.state import InstanceState
from llamaman.core.tables import (
    ApiKey,
    AppSetting,
    Benchmark,
    Download,
    Instance,
    KeyUsage,
    ModelAlias,
    ModelFootprint,
    ModelSource,
    Node,
    Peer,
    Preset,
    RequestLog,
    RpcWorker,
    User,
    UserSession,
)
from llamaman.instances.launch import LaunchSettings
from llamaman.scheduling.presets import PresetStore
from llamaman.testing.mariadb import MariaDBServer
from tests.helpers import fresh_mysql_database

# ---- backends --------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("mariadb", marks=pytest.mark.mysql)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'data' / 'llamaman.db'}"
        return
    with fresh_mysql_database(request.getfixturevalue("mariadb_server")) as url:
        yield url


@pytest.fixture
def empty_db(db_url: str) -> Iterator[Database]:
    db = Database(db_url)
    try:
        yield db
    finally:
        db.dispose()


@pytest.fixture
def db(empty_db: Database) -> Database:
    empty_db.migrate()
    return empty_db


# ---- migrations ------------------------------------------------------------------------------


def _alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


def _head_from_files() -> str:
    """The newest revision, read from the migration files themselves."""
    revisions, parents = set(), set()
    for f in (MIGRATIONS_DIR / "versions").glob("*.py"):
        text = f.read_text()
        rev = re.search(r"^revision\b[^=]*=\s*['\"](\w+)['\"]", text, re.M)
        down = re.search(r"^down_revision\b[^=]*=\s*['\"](\w+)['\"]", text, re.M)
        assert rev, f"{f.name} names no revision"
        revisions.add(rev.group(1))
        if down:
            parents.add(down.group(1))
    heads = revisions - parents
    assert len(heads) == 1, f"migrations must form one line, found heads {sorted(heads)}"
    return heads.pop()


def _current_revision(db: Database) -> str | None:
    with db.engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def test_migrations_create_every_table_and_column_from_an_empty_database(empty_db: Database) -> None:
    assert inspect(empty_db.engine).get_table_names() == []
    empty_db.migrate()
    inspector = inspect(empty_db.engine)
    assert set(inspector.get_table_names()) == set(SQLModel.metadata.tables) | {"alembic_version"}
    for name, table in SQLModel.metadata.tables.items():
        assert {c["name"] for c in inspector.get_columns(name)} == set(table.columns.keys()), name


def test_migrated_schema_matches_the_table_definitions_exactly(db: Database) -> None:
    # Types included: a column changed in tables.py without a migration shows up here.
    with db.engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(ctx, SQLModel.metadata) == []


def test_database_is_at_the_head_revision_of_the_migration_files(db: Database) -> None:
    heads = ScriptDirectory.from_config(_alembic_config()).get_heads()
    assert heads == [_head_from_files()]
    assert _current_revision(db) == heads[0]


@pytest.mark.mysql
def test_nodes_starting_together_on_an_empty_mariadb_migrate_it_once(mariadb_server: MariaDBServer) -> None:
    # Several boxes share one database and may all start at once: without the migration lock two
    # of them would both run 0001 and one would fail on "table already exists".
    with fresh_mysql_database(mariadb_server) as url:
        dbs = [Database(url) for _ in range(4)]
        barrier = threading.Barrier(len(dbs))
        errors: list[BaseException] = []

        def start(db: Database) -> None:
            barrier.wait()
            try:
                db.migrate()
            except BaseException as e:  # collected: the assertion below names it
                errors.append(e)

        threads = [threading.Thread(target=start, args=(db,)) for db in dbs]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        try:
            assert errors == []
            assert {_current_revision(db) for db in dbs} == {_head_from_files()}
            with dbs[0].engine.connect() as conn:
                ctx = MigrationContext.configure(conn)
                assert compare_metadata(ctx, SQLModel.metadata) == []
        finally:
            for db in dbs:
                db.dispose()


def test_migrating_again_changes_nothing_and_keeps_the_data(db: Database) -> None:
    revision = _current_revision(db)
    with db.session() as s:
        s.add(ModelAlias(alias="fast", target="tiny-a.gguf"))
        s.commit()
    db.migrate()
    db.migrate()
    assert _current_revision(db) == revision
    with db.session() as s:
        assert [a.alias for a in s.exec(select(ModelAlias))] == ["fast"]


def test_sqlite_runs_in_wal_mode(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'wal.db'}")
    try:
        db.migrate()
        with db.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    finally:
        db.dispose()


# ---- every table round-trips -----------------------------------------------------------------

TS = 1_795_310_031.731_395  # a timestamp with microseconds: single-precision floats would lose minutes
LONG_PATH = "deep/" * 100 + "m" * 19 + ".gguf"  # 524 characters


def _instance() -> Instance:
    return Instance(
        model_path=LONG_PATH,
        model_name="Llama 🦙 ünïcode",
        port=8001,
        internal_port=9001,
        n_gpu_layers=12,
        ctx_size=8192,
        threads=6,
        parallel=4,
        gpu_devices="0,1",
        extra_args="--flash-attn on --cache-type-k q8_0",
        embedding=True,
        mmproj="mm/mmproj-f16.gguf",
        idle_timeout_min=2.5,
        max_concurrent=3,
        max_queue_depth=50,
        share_queue=True,
        sampling={"temperature": 0.7, "top_k": 40, "top_p": 0.95},
        origin="proxy",
        state="healthy",
        desired_running=False,
        pid=4242,
        exit_code=-9,
        error="killed by SIGKILL\nlast words",
        last_log="line 1\nline 2 ✓\n" * 200,
        command=["/usr/bin/llama-server", "-m", "/models/a b.gguf", "--alias", "Llama 🦙"],
        created_at=TS,
        started_at=TS + 1.25,
        stopped_at=TS + 60.5,
        node="box-2.lab",
    )


def _download() -> Download:
    return Download(
        repo_id="org/model-GGUF",
        filename="model-Q4_K_M.gguf",
        revision="v1.0",
        status="running",
        bytes_done=41_234_567_890,
        bytes_total=42_949_672_960,  # 40 GiB: past a 32-bit column
        speed_limit_mbps=12.5,
        files=["a.gguf", "b.gguf"],
        attempts=2,
        error="HTTP 503",
        created_at=TS,
        finished_at=TS + 3600.125,
        node="box-1",
    )


TABLE_ROWS: dict[str, Callable[[], SQLModel]] = {
    "instance": _instance,
    "download": _download,
    "preset": lambda: Preset(
        model_path="embed/tiny-embed.gguf",
        settings={"ctx_size": 1024, "sampling": {"temperature": 0.2}, "extra_args": "--pooling mean"},
        updated_at=TS,
    ),
    "modelsource": lambda: ModelSource(
        model_path="org/model.gguf", repo_id="org/model-GGUF", filename="model.gguf", revision="abc123"
    ),
    "modelalias": lambda: ModelAlias(alias="gpt-4o", target="tiny-a.gguf", created_at=TS),
    "user": lambda: User(
        username="admin", password_hash="$argon2id$v=19$" + "x" * 80, is_admin=False, created_at=TS
    ),
    "usersession": lambda: UserSession(
        id="a" * 64, user_id=1, created_at=TS, last_seen_at=TS + 60, expires_at=TS + 7 * 86400
    ),
    "apikey": lambda: ApiKey(
        name="ci bot",
        prefix="llm_abcd",
        key_hash="f" * 128,
        allowed_models=["tiny-a", "tiny-b"],
        rpm_limit=60,
        revoked=True,
        created_at=TS,
        last_used_at=TS + 5,
        priority=-7,
    ),
    "modelfootprint": lambda: ModelFootprint(
        key="tiny-a.gguf|4096|1|-1||",
        model_path="tiny-a.gguf",
        cpu_only=9 * 2**40,  # past 32 bits: the columns are BIGINT
        gpu_full=3 * 2**33,
        host_full=123,
        slots=29,
        updated_at=TS,
    ),
    "keyusage": lambda: KeyUsage(
        key_id="k1", day="2026-11-22", model="tiny-a", requests=3, prompt_tokens=120, completion_tokens=48
    ),
    "appsetting": lambda: AppSetting(
        key="runtime", value={"max_models": 2, "nested": {"list": [1, "two", None]}}
    ),
    "requestlog": lambda: RequestLog(
        ts=TS,
        model="tiny-a",
        endpoint="/v1/chat/completions",
        key_name="ci bot",
        status=200,
        prompt_tokens=10,
        completion_tokens=20,
        ttft_ms=12.5,
        duration_ms=250.75,
        tokens_per_s=80.0,
        energy_j=1.5,
        load_ms=812.5,
        node="gpu-box_3",
    ),
    "node": lambda: Node(
        name="gpu-box_3",
        url="http://10.0.0.3:5000",
        started_at=TS,
        heartbeat_at=TS + 0.5,
        info={"models_on_disk": ["tiny-a"], "memory": {"gpu0": 24 * 2**30}, "inflight": 3},
    ),
    "rpcworker": lambda: RpcWorker(
        address="10.0.0.4:50052",
        node="gpu-box_3",
        memory_total=80 * 2**30,
        memory_free=79 * 2**30,
        heartbeat_at=TS,
        info={"devices": ["CPU"]},
    ),
    "peer": lambda: Peer(
        name="ollama-box",
        base_url="http://10.0.0.9:11434/v1",
        api_key="sk-" + "z" * 40,
        model_filter="llama3*,qwen*",
        enabled=False,
        created_at=TS,
    ),
    "benchmark": lambda: Benchmark(
        model="tiny-a",
        params={"requests": 50, "concurrency": 4},
        results={"p50_ms": 12.25, "tokens_per_s": [80.5, 81.0]},
        status="done",
        created_at=TS,
    ),
}


def test_every_table_has_a_round_trip_case() -> None:
    assert set(TABLE_ROWS) == set(SQLModel.metadata.tables)


@pytest.mark.parametrize("table", list(TABLE_ROWS))
def test_row_reads_back_exactly_as_written(db: Database, table: str) -> None:
    row = TABLE_ROWS[table]()
    written = row.model_dump()
    with db.session() as s:
        s.add(row)
        s.commit()
        key = inspect(row).identity
    db.engine.dispose()  # read through a new connection, not a cached object
    with db.session() as s:
        back = s.get(type(row), key)
        assert back is not None
        read = back.model_dump()
    if written.get("id") is None and "id" in read:
        assert isinstance(read.pop("id"), int)  # assigned by the database
        written.pop("id")
    assert read == written


def test_a_second_user_with_the_same_name_is_refused(db: Database) -> None:
    with db.session() as s:
        s.add(User(username="admin", password_hash="h1"))
        s.commit()
    with db.session() as s:
        s.add(User(username="admin", password_hash="h2"))
        with pytest.raises(IntegrityError):
            s.commit()
    with db.session() as s:
        assert [u.password_hash for u in s.exec(select(User))] == ["h1"]


def test_key_usage_is_keyed_by_key_day_and_model_together(db: Database) -> None:
    with db.session() as s:
        s.add(KeyUsage(key_id="k1", day="2026-11-22", model="tiny-a", requests=1))
        s.add(KeyUsage(key_id="k1", day="2026-11-22", model="tiny-b", requests=2))
        s.add(KeyUsage(key_id="k1", day="2026-11-23", model="tiny-a", requests=3))
        s.add(KeyUsage(key_id="k2", day="2026-11-22", model="tiny-a", requests=4))
        s.commit()
    with db.session() as s:
        got = s.get(KeyUsage, ("k1", "2026-11-22", "tiny-b"))
        assert got is not None and got.requests == 2
        assert len(list(s.exec(select(KeyUsage)))) == 4
    with db.session() as s:
        s.add(KeyUsage(key_id="k1", day="2026-11-22", model="tiny-a", requests=9))
        with pytest.raises(IntegrityError):
            s.commit()


def test_request_log_ids_count_up(db: Database) -> None:
    with db.session() as s:
        rows = [RequestLog(model="tiny-a", status=200) for _ in range(3)]
        s.add_all(rows)
        s.commit()
        ids = [r.id for r in rows]
    assert all(isinstance(i, int) for i in ids) and ids == sorted(set(ids))  # type: ignore[type-var]


# ---- stores on top of the tables -------------------------------------------------------------


async def test_runtime_settings_are_stored_and_loaded_again(
    db: Database, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings()
    runtime = RuntimeConfig(settings, db, EventBus())
    assert (await runtime.load()).max_models == 0
    await runtime.update({"max_models": 2, "evict_manual": True})
    with pytest.raises(ValidationError):
        await runtime.update({"max_models": -3})

    again = RuntimeConfig(settings, db, EventBus())
    loaded = await again.load()
    assert (loaded.max_models, loaded.evict_manual) == (2, True)
    # An environment variable set on purpose outranks the saved value.
    pinned = await RuntimeConfig(make_settings(LLAMAMAN_MAX_MODELS=1), db, EventBus()).load()
    assert (pinned.max_models, pinned.evict_manual) == (1, True)


async def test_presets_are_saved_merged_listed_and_deleted(db: Database) -> None:
    events = EventBus()
    seen: list[str] = []
    events.listen(lambda ev: seen.append(ev.topic), "preset.")
    store = PresetStore(db, events)
    unicode_path = "modèles/llama 🦙.gguf"

    assert await store.put("embed/tiny-embed.gguf", {"ctx_size": 1024, "embedding": True}) == {
        "ctx_size": 1024,
        "embedding": True,
    }
    await store.put(unicode_path, {"parallel": 3, "sampling": {"temperature": 0.5}})
    everything = await store.all()
    assert set(everything) == {"embed/tiny-embed.gguf", unicode_path}
    assert everything["embed/tiny-embed.gguf"] == {"ctx_size": 1024, "embedding": True}
    assert everything[unicode_path]["parallel"] == 3
    assert everything[unicode_path]["sampling"]["temperature"] == 0.5
    # A restored backup adds what is missing and keeps what the user has.
    merged = await store.put("embed/tiny-embed.gguf", {"ctx_size": 64, "parallel": 2}, merge=True)
    assert merged == {"ctx_size": 1024, "embedding": True, "parallel": 2}
    with pytest.raises(ValidationError):
        await store.put("tiny-a.gguf", {"ctx_size": -1})
    assert await store.get("tiny-a.gguf") is None

    assert await store.delete(unicode_path) is True
    assert await store.delete(unicode_path) is False
    assert list(await store.all()) == ["embed/tiny-embed.gguf"]
    assert seen == ["preset.saved", "preset.saved", "preset.saved", "preset.deleted"]


# ---- the whole app on MariaDB ----------------------------------------------------------------


@pytest.mark.mysql
async def test_services_on_mariadb_store_a_launched_instance_and_bring_it_back(
    mariadb_server: MariaDBServer, make_settings: Callable[..., Settings], llama_server_bin: str
) -> None:
    with fresh_mysql_database(mariadb_server) as url:
        settings = make_settings(LLAMA_SERVER_BIN=llama_server_bin, DATABASE_URL=url)
        first = LlamaMan(settings)
        await first.start()
        try:
            assert first.db.backend == "mysql"
            m = await first.supervisor.launch(LaunchSettings(model_path="tiny-a.gguf", ctx_size=512))
            assert await m.proc.wait_for({InstanceState.HEALTHY, InstanceState.FAILED}, timeout=30) == (
                InstanceState.HEALTHY
            ), m.proc.error
            await first.supervisor.flush()
            reader = Database(url)
            try:
                with reader.session() as s:
                    row = s.get(Instance, m.id)
            finally:
                reader.dispose()
            assert row is not None
            assert (row.model_path, row.model_name, row.state) == ("tiny-a.gguf", "tiny-a", "healthy")
            assert row.pid == m.proc.pid and row.command == m.proc.argv
            assert row.started_at == m.proc.started_at
        finally:
            await first.stop()

        second = LlamaMan(settings)
        await second.start()
        try:
            [back] = second.supervisor.list()
            assert back.id == m.id
            assert await back.proc.wait_for({InstanceState.HEALTHY, InstanceState.FAILED}, timeout=30) == (
                InstanceState.HEALTHY
            ), back.proc.error
        finally:
            await second.stop()
