"""The activity log and per-key usage while the database is away, on SQLite with the failures made
on purpose: rows wait, come back once, are bounded; usage increments add up across two writers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlmodel import select

from llamaman.auth.apikeys import KeyStore
from llamaman.core.config import Settings
from llamaman.core.db import Database
from llamaman.core.events import EventBus
from llamaman.core.exchange import Exchange
from llamaman.core.runtime import RuntimeConfig
from llamaman.core.tables import KeyUsage, RequestLog
from llamaman.telemetry import activity
from llamaman.telemetry.activity import ActivityLog


def _away() -> OperationalError:
    return OperationalError("INSERT", {}, ConnectionRefusedError("Can't connect to MySQL server"))


def _log(make_settings: Callable[..., Settings], **kw: Any) -> tuple[Database, ActivityLog]:
    settings = make_settings()
    settings.ensure_dirs()
    db = Database(settings.effective_database_url)
    db.migrate()
    return db, ActivityLog(db, RuntimeConfig(settings, db, EventBus()), **kw)


def _exchange(i: int, node: str | None = None) -> Exchange:
    ex = Exchange("tiny-a", "/v1/chat/completions", status=200, prompt_tokens=3, completion_tokens=i)
    ex.finished = ex.started + 0.01
    ex.node = node
    return ex


def _rows(db: Database) -> list[RequestLog]:
    with db.session() as s:
        return list(s.exec(select(RequestLog).order_by(RequestLog.id)).all())  # type: ignore[arg-type]


async def test_rows_wait_while_the_database_is_away_and_land_once_it_answers(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    db, log = _log(make_settings, node="alpha")
    real_insert = log._insert
    calls: list[int] = []

    def away(batch: list[Any], with_ids: bool = True) -> list[int | None]:
        calls.append(len(batch))
        raise _away()

    monkeypatch.setattr(log, "_insert", away)
    for i in range(5):
        log.observe(_exchange(i))
    with pytest.raises(OperationalError):
        await log.flush()
    log.observe(_exchange(5, node="beta"))  # answered by another node, relayed here
    with pytest.raises(OperationalError):
        await log.flush()
    assert calls == [5, 6] and log.db_error is not None and _rows(db) == []

    monkeypatch.setattr(log, "_insert", real_insert)
    assert await log.flush() == 6

    rows = _rows(db)
    assert [r.completion_tokens for r in rows] == list(range(6))
    assert [r.node for r in rows] == ["alpha"] * 5 + ["beta"]
    assert log.db_error is None and log.written == 6
    db.dispose()


async def test_a_write_that_committed_but_lost_its_answer_is_not_written_twice(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    db, log = _log(make_settings)
    real_insert = log._insert
    failed = []

    def committed_then_lost(batch: list[Any], with_ids: bool = True) -> list[int | None]:
        real_insert(batch, with_ids)
        if not failed:
            failed.append(len(batch))
            raise _away()  # the connection broke after COMMIT reached the server
        return [None] * len(batch)

    monkeypatch.setattr(log, "_insert", committed_then_lost)
    for i in range(4):
        log.observe(_exchange(i))
    with pytest.raises(OperationalError):
        await log.flush()
    log.observe(_exchange(4))

    assert await log.flush() == 5

    assert failed == [4]
    assert [r.completion_tokens for r in _rows(db)] == [0, 1, 2, 3, 4]
    db.dispose()


async def test_a_write_the_database_refuses_is_not_retried_forever(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    db, log = _log(make_settings)

    def refused(batch: list[Any], with_ids: bool = True) -> list[int | None]:
        raise IntegrityError("INSERT", {}, ValueError("bad row"))

    monkeypatch.setattr(log, "_insert", refused)
    log.observe(_exchange(1))
    with pytest.raises(IntegrityError):
        await log.flush()

    monkeypatch.undo()
    assert await log.flush() == 0
    db.dispose()


async def test_the_waiting_rows_are_bounded_and_the_oldest_dropped_are_counted(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    db, log = _log(make_settings)
    monkeypatch.setattr(activity, "MAX_UNWRITTEN", 3)
    real_insert = log._insert

    def away(batch: list[Any], with_ids: bool = True) -> list[int | None]:
        raise _away()

    monkeypatch.setattr(log, "_insert", away)
    for i in range(5):
        log.observe(_exchange(i))
    with pytest.raises(OperationalError):
        await log.flush()
    monkeypatch.setattr(log, "_insert", real_insert)

    assert await log.flush() == 3
    assert log.dropped == 2
    assert [r.completion_tokens for r in _rows(db)] == [2, 3, 4]
    db.dispose()


async def test_usage_from_two_writers_of_one_key_adds_up_and_survives_a_failed_write(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings()
    settings.ensure_dirs()
    db = Database(settings.effective_database_url)
    db.migrate()
    first, second = KeyStore(db), KeyStore(db)
    await first.load()
    record, _ = await first.create("shared")
    await second.load()

    first.record_usage(record.id, "tiny-a", 10, 5)
    real_write = second._write
    monkeypatch.setattr(second, "_write", lambda *a: (_ for _ in ()).throw(_away()))
    second.record_usage(record.id, "tiny-a", 1, 1)
    with pytest.raises(OperationalError):
        await second.flush()
    monkeypatch.setattr(second, "_write", real_write)
    await first.flush()
    second.record_usage(record.id, "tiny-a", 2, 2)
    await second.flush()
    await first.flush()

    with db.session() as s:
        [row] = s.exec(select(KeyUsage)).all()
    assert (row.requests, row.prompt_tokens, row.completion_tokens) == (3, 13, 8)
    db.dispose()
