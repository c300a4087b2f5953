"""API keys: creation, lookup on every request, per-key scope, request rate, expiry and token usage.

A key's scope says what it reaches (``llamaman.auth.access``): ``inference`` keys the model endpoints only,
``admin`` keys LlamaMan's management too. Keys made in the UI, over REST or in ``LLAMAMAN_API_KEYS``
are inference keys unless admin is asked for; ``LLAMAMAN_ADMIN_API_KEYS`` holds admin keys.

Keys live in memory (loaded once, changed only through this store) so checking one costs a hash and
a dict lookup, never a database query. What changes per request (last use, token usage) is written
in batches by a background flush, so a busy key does not turn every request into a write.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import math
import secrets
import time
from collections import deque
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlmodel import col, select, update

from llamaman.core.db import Database, is_unreachable
from llamaman.core.errors import NotFound
from llamaman.core.identity import Identity, KeyScope
from llamaman.core.tables import ApiKey, KeyUsage
from llamaman.core.tasks import at_once, cancel_and_wait

log = logging.getLogger(__name__)

KEY_PREFIX = "llm-"
SHOWN_PREFIX_LEN = len(KEY_PREFIX) + 8  # listings tell keys apart by "llm-" and 8 characters more
LAST_USED_WRITE_INTERVAL = 60.0  # a key's last-used time is written at most this often (seconds)
FLUSH_INTERVAL = 15.0
RATE_WINDOW = 60.0


def generate_key() -> str:
    # 32 random bytes: 43 URL-safe characters, 256 bits.
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    # A fast hash is right here, unlike for passwords: generated keys carry 256 random bits, so
    # guessing one from a leaked hash is hopeless at any hashing speed, and a slow hash (argon2) would
    # add tens of milliseconds and megabytes of memory to every API request.
    return hashlib.sha256(key.encode()).hexdigest()


def today() -> str:
    return _utc_date(int(time.time() // 86400))


@functools.lru_cache(maxsize=2)  # formatted once a day, not on every request
def _utc_date(day: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(day * 86400))


def seconds_to_utc_midnight(now: datetime | None = None) -> int:
    """Seconds until the next UTC day, when daily quotas start again (at least 1)."""
    now = now or datetime.now(UTC)
    midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return max(1, math.ceil((midnight - now).total_seconds()))


@dataclass(frozen=True, slots=True)
class KeyRecord:
    id: str
    name: str
    prefix: str
    key_hash: str
    allowed_models: tuple[str, ...] = ()
    rpm_limit: int = 0
    revoked: bool = False
    created_at: float = 0.0
    source: str = "db"  # "env" for LLAMAMAN_(ADMIN_)API_KEYS: no row, cannot be revoked from the API
    scope: KeyScope = "inference"
    expires_at: float | None = None
    daily_token_quota: int = 0
    priority: int = 0

    def identity(self) -> Identity:
        return Identity(
            kind="key",
            name=self.name,
            key_id=self.id,
            allowed_models=self.allowed_models,
            rpm_limit=self.rpm_limit,
            scope=self.scope,
            expires_at=self.expires_at,
            daily_token_quota=self.daily_token_quota,
            priority=self.priority,
        )

    @classmethod
    def of(cls, row: ApiKey) -> KeyRecord:
        return cls(
            id=row.id,
            name=row.name,
            prefix=row.prefix,
            key_hash=row.key_hash,
            allowed_models=tuple(row.allowed_models or ()),
            rpm_limit=row.rpm_limit,
            revoked=row.revoked,
            created_at=row.created_at,
            # Anything but "admin" (a hand-edited row included) is read as the narrower scope.
            scope="admin" if row.scope == "admin" else "inference",
            expires_at=row.expires_at,
            daily_token_quota=max(0, row.daily_token_quota or 0),
            priority=row.priority or 0,
        )


class UnknownKey(NotFound, LookupError):
    """No such key; the message is the key's id."""


def expiry_text(expires_at: float) -> str:
    return datetime.fromtimestamp(expires_at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


class RateLimiter:
    """Sliding one-minute window of request times per key."""

    def __init__(self) -> None:
        self._hits: dict[str, deque[float]] = {}

    def check(self, key_id: str, limit: int, now: float | None = None) -> int | None:
        """Count a request at ``now``; None when within ``limit`` per minute, else seconds to wait (and
        the request is not counted)."""
        if limit <= 0:
            return None
        now = time.monotonic() if now is None else now
        hits = self._hits.setdefault(key_id, deque())
        while hits and hits[0] <= now - RATE_WINDOW:
            hits.popleft()
        if len(hits) >= limit:
            return max(1, math.ceil(hits[0] + RATE_WINDOW - now))
        hits.append(now)
        return None

    def refund(self, key_id: str, at: float) -> None:
        """Take back the request counted at ``at``: it was refused, so it used nothing."""
        hits = self._hits.get(key_id)
        if hits is not None:
            with contextlib.suppress(ValueError):
                hits.remove(at)

    def forget(self, key_id: str) -> None:
        self._hits.pop(key_id, None)


class KeyStore:
    def __init__(self, db: Database, env_keys: str | None = None, env_admin_keys: str | None = None) -> None:
        self.db = db
        self.by_hash: dict[str, KeyRecord] = {}
        self.by_id: dict[str, KeyRecord] = {}
        self.rates = RateLimiter()
        self._env = [k.strip() for k in (env_keys or "").split(",") if k.strip()]
        self._env_admin = [k.strip() for k in (env_admin_keys or "").split(",") if k.strip()]
        # Tokens (prompt + completion) each key used on the UTC day ``_tokens_day``: what quotas read.
        self._tokens_day = today()
        self._tokens_today: dict[str, int] = {}
        self._last_used: dict[str, float] = {}  # key id -> time of its last request (wall clock)
        self._dirty: set[str] = set()  # keys used since their last-used time was last written
        self._persisted: dict[str, float] = {}  # key id -> monotonic time of its last last-used write
        # (key id, day, model) -> [requests, prompt tokens, completion tokens] not yet written
        self._usage: dict[tuple[str, str, str], list[int]] = {}
        self._flush_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self.wait_idle = at_once  # for no request in flight (the services' router says): writes wait

    # ---- lifecycle -------------------------------------------------------------------------------
    async def load(self) -> None:
        rows = await asyncio.to_thread(self._read_all)
        records = [KeyRecord.of(r) for r in rows]
        admin_hashes = {hash_key(k) for k in self._env_admin}
        for n, key in enumerate(self._env, start=1):
            if hash_key(key) in admin_hashes:
                continue  # in both lists: the wider scope, under its admin name
            records.append(
                KeyRecord(id=f"env-key-{n}", name=f"env-key-{n}", prefix=key[:4] + "…",
                          key_hash=hash_key(key), source="env")
            )  # fmt: skip
        for n, key in enumerate(self._env_admin, start=1):
            records.append(
                KeyRecord(id=f"env-admin-key-{n}", name=f"env-admin-key-{n}", prefix=key[:4] + "…",
                          key_hash=hash_key(key), source="env", scope="admin")
            )  # fmt: skip
        self.by_hash = {r.key_hash: r for r in records}
        self.by_id = {r.id: r for r in records}
        self._last_used = {r.id: r.last_used_at for r in rows if r.last_used_at}
        day = today()
        used = await asyncio.to_thread(self._read_usage, day)
        self._tokens_day = day
        self._tokens_today = {}
        for u in used:
            spent = u.prompt_tokens + u.completion_tokens
            self._tokens_today[u.key_id] = self._tokens_today.get(u.key_id, 0) + spent

    def _read_all(self) -> list[ApiKey]:
        with self.db.session() as s:
            return list(s.exec(select(ApiKey)).all())

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._flush_loop(), name="api-key-flush")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        await self.flush(force=True)

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            await self.wait_idle(FLUSH_INTERVAL)
            try:
                await self.flush()
            except Exception as exc:  # kept by flush and written at a later try
                if is_unreachable(exc):
                    log.warning("API key usage waits for the database: %s", exc)
                else:
                    log.exception("could not write API key usage")

    # ---- per request -----------------------------------------------------------------------------
    def verify(self, key: str) -> KeyRecord | None:
        """The key's record (revoked ones too, so the caller can say so), or None if unknown."""
        return self.by_hash.get(hash_key(key)) if key else None

    def touch(self, record: KeyRecord) -> None:
        self._last_used[record.id] = time.time()
        if record.source == "db":
            self._dirty.add(record.id)

    def record_usage(self, key_id: str, model: str, prompt_tokens: int, completion_tokens: int) -> None:
        day = today()
        counts = self._usage.setdefault((key_id, day, model[:255]), [0, 0, 0])
        counts[0] += 1
        counts[1] += max(0, prompt_tokens)
        counts[2] += max(0, completion_tokens)
        self._roll_day(day)
        spent = max(0, prompt_tokens) + max(0, completion_tokens)
        self._tokens_today[key_id] = self._tokens_today.get(key_id, 0) + spent

    def _roll_day(self, day: str) -> None:
        if day != self._tokens_day:
            self._tokens_day, self._tokens_today = day, {}

    def tokens_today(self, key_id: str) -> int:
        self._roll_day(today())
        return self._tokens_today.get(key_id, 0)

    def quota_wait(self, identity: Identity) -> int | None:
        """Seconds until the key's daily token quota starts again when it is used up, else None. A
        request that starts under the quota runs to its end, so a day can end a little above it."""
        quota = identity.daily_token_quota
        if quota <= 0 or identity.key_id is None or self.tokens_today(identity.key_id) < quota:
            return None
        return seconds_to_utc_midnight()

    # ---- management ------------------------------------------------------------------------------
    async def create(
        self,
        name: str,
        allowed_models: list[str] | None = None,
        rpm_limit: int = 0,
        *,
        scope: KeyScope = "inference",
        expires_at: float | None = None,
        daily_token_quota: int = 0,
        priority: int = 0,
    ) -> tuple[KeyRecord, str]:
        """A new key; the secret is returned here and never again."""
        allowed = [m for m in (allowed_models or []) if m]
        if scope == "admin" and allowed:
            raise ValueError(
                "an admin key cannot be limited to some models (it could make itself an unlimited one)"
            )
        key = generate_key()
        row = ApiKey(
            name=name,
            prefix=key[:SHOWN_PREFIX_LEN],
            key_hash=hash_key(key),
            allowed_models=allowed,
            rpm_limit=rpm_limit,
            scope=scope,
            expires_at=expires_at,
            daily_token_quota=daily_token_quota,
            priority=priority,
        )
        await asyncio.to_thread(self._save, row)
        record = KeyRecord.of(row)
        self.by_hash[record.key_hash] = record
        self.by_id[record.id] = record
        return record, key

    def _save(self, row: ApiKey) -> None:
        with self.db.session() as s:
            s.add(row)
            s.commit()

    async def update(self, key_id: str, changes: dict[str, Any]) -> KeyRecord:
        """Change a stored key's ``expires_at``, ``daily_token_quota`` or ``rpm_limit`` (validated by
        the caller); the secret, scope and allow-list stay as made."""
        record = self.by_id.get(key_id)
        if record is None:
            raise UnknownKey(key_id)
        if record.source == "env":
            raise ValueError(f"{record.name} comes from the environment: its limits cannot be changed")
        allowed = {"expires_at", "daily_token_quota", "rpm_limit", "priority"}
        changes = {k: v for k, v in changes.items() if k in allowed}
        await asyncio.to_thread(self._write_changes, key_id, changes)
        changed = replace(record, **changes)
        self.by_hash[changed.key_hash] = changed
        self.by_id[key_id] = changed
        return changed

    def _write_changes(self, key_id: str, changes: dict[str, Any]) -> None:
        with self.db.session() as s:
            row = s.get(ApiKey, key_id)
            if row is None:
                raise UnknownKey(key_id)
            for k, v in changes.items():
                setattr(row, k, v)
            s.add(row)
            s.commit()

    async def revoke(self, key_id: str) -> KeyRecord:
        record = self.by_id.get(key_id)
        if record is None:
            raise UnknownKey(key_id)
        if record.source == "env":
            raise ValueError(f"{record.name} comes from the environment: remove it there and restart")
        await asyncio.to_thread(self._mark_revoked, key_id)
        revoked = replace(record, revoked=True)
        self.by_hash[revoked.key_hash] = revoked
        self.by_id[key_id] = revoked
        self.rates.forget(key_id)
        return revoked

    def _mark_revoked(self, key_id: str) -> None:
        with self.db.session() as s:
            row = s.get(ApiKey, key_id)
            if row is not None:
                row.revoked = True
                s.add(row)
                s.commit()

    async def listing(self) -> list[dict[str, Any]]:
        """Every key without its secret, with its token usage by model and day."""
        await self.flush()
        rows = await asyncio.to_thread(self._read_usage, None)
        usage: dict[str, list[KeyUsage]] = {}
        for u in rows:
            usage.setdefault(u.key_id, []).append(u)
        records = sorted(self.by_id.values(), key=lambda r: r.created_at)
        return [self.view(r, usage.get(r.id, [])) for r in records]

    def _read_usage(self, day: str | None) -> list[KeyUsage]:
        with self.db.session() as s:
            query = select(KeyUsage) if day is None else select(KeyUsage).where(KeyUsage.day == day)
            return list(s.exec(query).all())

    def view(self, record: KeyRecord, usage: list[KeyUsage] | None = None) -> dict[str, Any]:
        by_model: dict[str, dict[str, int]] = {}
        totals = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0}
        days = []
        for u in sorted(usage or [], key=lambda u: (u.day, u.model), reverse=True):
            counts = {"requests": u.requests, "prompt_tokens": u.prompt_tokens,
                      "completion_tokens": u.completion_tokens}  # fmt: skip
            days.append({"day": u.day, "model": u.model, **counts})
            model = by_model.setdefault(u.model, dict.fromkeys(totals, 0))
            for k, v in counts.items():
                model[k] += v
                totals[k] += v
        return {
            "id": record.id,
            "name": record.name,
            "prefix": record.prefix,
            "source": record.source,
            "created_at": record.created_at or None,
            "last_used_at": self._last_used.get(record.id),
            "revoked": record.revoked,
            "allowed_models": list(record.allowed_models),
            "rpm_limit": record.rpm_limit,
            "scope": record.scope,
            "expires_at": record.expires_at,
            "expired": record.expires_at is not None and time.time() >= record.expires_at,
            "daily_token_quota": record.daily_token_quota,
            "priority": record.priority,
            "tokens_today": self.tokens_today(record.id),
            "usage": {**totals, "by_model": by_model, "by_day": days},
        }

    # ---- writing what happened -------------------------------------------------------------------
    async def flush(self, *, force: bool = False) -> None:
        """Write pending usage and the last-used times that are due (``force``: all of them, at exit)."""
        async with self._flush_lock:
            usage, self._usage = self._usage, {}
            now = time.monotonic()
            due = {
                kid: self._last_used[kid] for kid in self._dirty
                if force or now - self._persisted.get(kid, -math.inf) >= LAST_USED_WRITE_INTERVAL
            }  # fmt: skip
            self._dirty -= due.keys()
            if not usage and not due:
                return
            try:
                await asyncio.to_thread(self._write, usage, due)
            except Exception:
                for k, counts in usage.items():  # keep them for the next try
                    mine = self._usage.setdefault(k, [0, 0, 0])
                    for i, v in enumerate(counts):
                        mine[i] += v
                self._dirty |= due.keys()
                raise
            for kid in due:
                self._persisted[kid] = now

    def _write(self, usage: dict[tuple[str, str, str], list[int]], last_used: dict[str, float]) -> None:
        with self.db.session() as s:
            # Increments in the database, not read-add-write: several nodes count the same key.
            for (key_id, day, model), (n, prompt, completion) in usage.items():
                k = KeyUsage
                same = (col(k.key_id) == key_id, col(k.day) == day, col(k.model) == model)
                added = s.exec(
                    update(KeyUsage)
                    .where(*same)
                    .values(
                        requests=col(KeyUsage.requests) + n,
                        prompt_tokens=col(KeyUsage.prompt_tokens) + prompt,
                        completion_tokens=col(KeyUsage.completion_tokens) + completion,
                    )
                )
                if not added.rowcount:  # a new row; a node inserting it first fails this write, kept
                    s.add(KeyUsage(key_id=key_id, day=day, model=model, requests=n,
                                   prompt_tokens=prompt, completion_tokens=completion))  # fmt: skip
            for key_id, ts in last_used.items():
                key = s.get(ApiKey, key_id)
                if key is not None and (key.last_used_at or 0) < ts:
                    key.last_used_at = ts
                    s.add(key)
            s.commit()
