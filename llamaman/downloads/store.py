"""Download records in the database: ordered background writes, loading, deleting, model sources."""

from __future__ import annotations

import logging
from collections.abc import Callable

from llamaman.core.db import Database
from llamaman.core.record_store import RecordStore
from llamaman.core.tables import Download, ModelSource

log = logging.getLogger(__name__)


class DownloadStore(RecordStore[Download]):
    def __init__(self, db: Database, known: Callable[[str], bool], node: str | None = None) -> None:
        super().__init__(db, Download, known, node)

    def put_sources(self, sources: list[ModelSource]) -> None:
        """Remember where model files came from (blocking)."""
        with self.db.session() as s:
            for src in sources:
                s.merge(src)
            s.commit()
