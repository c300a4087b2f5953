"""The activity log's writes wait for the router to be idle, so a caller who keeps a request in flight
all the time could hope to keep requests out of the log. The wait has a bound: rows are written
however busy the box stays, and a key's token count (what its quota reads) never waits at all."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from sqlmodel import select

from llamaman.auth.apikeys import KeyStore
from llamaman.core.config import Settings
from llamaman.core.tables import RequestLog
from llamaman.telemetry.activity import ActivityLog
from tests.scheduling.test_idle import Places
from tests.telemetry.test_activity import _exchange, _settings_db


async def test_a_box_kept_busy_forever_still_writes_its_activity_rows(
    make_settings: Callable[..., Settings],
) -> None:
    db, runtime = _settings_db(make_settings)
    box = Places(1)
    [slot] = box.slots.values()
    slot.enter()  # a request that never ends
    log = ActivityLog(db, runtime, batch_delay=0.01, max_defer=0.2, wait_idle=box.wait_idle)
    await log.start()
    try:
        for i in range(3):
            log.observe(_exchange(i))
        async with asyncio.timeout(30):
            while log.written < 3:
                await asyncio.sleep(0.02)
        with db.session() as s:
            assert len(s.exec(select(RequestLog)).all()) == 3
        assert not box.idle()
    finally:
        await log.stop()
        db.dispose()


async def test_a_keys_tokens_count_against_its_quota_at_once_while_the_box_is_busy(
    make_settings: Callable[..., Settings],
) -> None:
    db, _ = _settings_db(make_settings)
    keys = KeyStore(db)
    box = Places(1)
    next(iter(box.slots.values())).enter()
    keys.wait_idle = box.wait_idle
    keys.record_usage("k1", "tiny-a", 10, 5)
    assert keys.tokens_today("k1") == 15  # the write waits; the count its quota reads does not
    db.dispose()
