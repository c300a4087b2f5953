"""Model aliases (Ollama's /api/copy): extra names that resolve to a model in the library."""

from __future__ import annotations

import asyncio

from sqlmodel import select

from llamaman.core.db import Database
from llamaman.core.tables import ModelAlias


class AliasStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.aliases: dict[str, str] = {}

    async def load(self) -> dict[str, str]:
        self.aliases = await asyncio.to_thread(self._load)
        return self.aliases

    def _load(self) -> dict[str, str]:
        with self.db.session() as s:
            return {a.alias: a.target for a in s.exec(select(ModelAlias))}

    async def put(self, alias: str, target: str) -> None:
        await asyncio.to_thread(self._put, alias, target)
        self.aliases[alias] = target

    def _put(self, alias: str, target: str) -> None:
        with self.db.session() as s:
            row = s.get(ModelAlias, alias) or ModelAlias(alias=alias, target=target)
            row.target = target
            s.add(row)
            s.commit()

    async def delete(self, alias: str) -> bool:
        ok = await asyncio.to_thread(self._delete, alias)
        self.aliases.pop(alias, None)
        return ok

    def _delete(self, alias: str) -> bool:
        with self.db.session() as s:
            row = s.get(ModelAlias, alias)
            if row is None:
                return False
            s.delete(row)
            s.commit()
            return True
