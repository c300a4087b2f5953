"""Instance records in the database."""

from __future__ import annotations

from collections.abc import Callable

from llamaman.core.db import Database
from llamaman.core.record_store import RecordStore
from llamaman.core.tables import Instance


class InstanceStore(RecordStore[Instance]):
    def __init__(self, db: Database, is_current: Callable[[str], bool], node: str | None = None) -> None:
        super().__init__(db, Instance, is_current, node)
