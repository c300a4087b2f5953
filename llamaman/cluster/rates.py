"""A key's requests-per-minute limit across every entry node: one shared counter per key and minute.

Each node keeps its own sliding window (``auth.apikeys.RateLimiter``) and, when it is one of several,
also takes a place in the key's counter for the current minute in the shared database, so a key
limited to N requests a minute gets N in all, whichever nodes it calls. The counter is a row of the
``appsetting`` table (``rpm:<minute>:<key id>``), taken with ``SELECT … FOR UPDATE`` so two nodes
never both take the last place on MariaDB. With the database away the node's own window still holds.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable

from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from llamaman.core.db import Database
from llamaman.core.tables import AppSetting

log = logging.getLogger(__name__)

_PREFIX = "rpm:"
_AWAY_S = 10.0


def _row_key(minute: int, key_id: str) -> str:
    return f"{_PREFIX}{minute:010d}:{key_id}"


class SharedRates:
    def __init__(self, db: Database, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.clock = clock
        self._swept = -1
        # After the database failed a check, requests do not wait on it again until this time.
        self._away_until = 0.0

    def _take(self, key_id: str, limit: int, minute: int) -> bool:
        name = _row_key(minute, key_id)
        for _ in range(2):  # a second try when another node created the row at the same moment
            with self.db.session() as s:
                row = s.exec(select(AppSetting).where(AppSetting.key == name).with_for_update()).first()
                if row is None:
                    s.add(AppSetting(key=name, value=1))
                else:
                    count = int(row.value) if isinstance(row.value, int | float) else 0
                    if count >= limit:
                        return False
                    row.value = count + 1
                    s.add(row)
                try:
                    s.commit()
                    return True
                except IntegrityError:
                    s.rollback()
        return True

    def _give_back(self, key_id: str, minute: int) -> None:
        with self.db.session() as s:
            row = s.exec(
                select(AppSetting).where(AppSetting.key == _row_key(minute, key_id)).with_for_update()
            ).first()
            if row is not None and isinstance(row.value, int | float) and row.value > 0:
                row.value = int(row.value) - 1
                s.add(row)
                s.commit()

    def _sweep(self, minute: int) -> None:
        """Forget the counters of minutes gone by (the key of a row sorts by its minute)."""
        with self.db.session() as s:
            s.exec(  # type: ignore[call-overload]
                delete(AppSetting).where(
                    col(AppSetting.key).startswith(_PREFIX), col(AppSetting.key) < _row_key(minute - 1, "")
                )
            )
            s.commit()

    async def check(self, key_id: str, limit: int) -> tuple[int | None, int]:
        """(seconds to wait, or None when a place was taken; the minute it counts in)."""
        now = self.clock()
        minute = int(now // 60)
        if now < self._away_until:
            return None, minute
        try:
            if minute != self._swept:
                self._swept = minute
                await asyncio.to_thread(self._sweep, minute)
            taken = await asyncio.to_thread(self._take, key_id, limit, minute)
        except Exception as exc:  # the database away: the node's own window is the limit meanwhile
            log.warning("shared rate counter unavailable for %.0fs: %s", _AWAY_S, exc)
            self._away_until = self.clock() + _AWAY_S
            return None, minute
        if taken:
            return None, minute
        return max(1, math.ceil((minute + 1) * 60 - now)), minute

    async def refund(self, key_id: str, minute: int) -> None:
        if self.clock() < self._away_until:
            return
        try:
            await asyncio.to_thread(self._give_back, key_id, minute)
        except Exception as exc:
            log.debug("shared rate refund lost: %s", exc)
            self._away_until = self.clock() + _AWAY_S
