"""Sign-in sessions kept on the server, their cookie and the one-time sign-in tickets.

The session id travels signed in the cookie; only its SHA-256 is stored (table ``usersession``, cached
in memory). ``SessionBook`` is the part of ``AuthService`` that owns them.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from urllib.parse import quote

from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlmodel import col, delete
from starlette.requests import HTTPConnection
from starlette.responses import Response

from llamaman.auth.clients import is_https
from llamaman.core.db import Database
from llamaman.core.tables import User, UserSession

log = logging.getLogger(__name__)

SESSION_COOKIE = "llamaman_session"
# A session ends a week after sign-in, or after a day without any request, whichever comes first.
SESSION_MAX_AGE = 7 * 24 * 3600
SESSION_IDLE_S = 24 * 3600
# How stale a session's stored last-seen time may get: requests update it in memory, and it is
# written at most this often (it matters only for the idle expiry after a restart).
SESSION_WRITE_S = 60.0
TICKET_MAX_AGE = 60


def _fingerprint(user: User) -> str:
    return hashlib.sha256(user.password_hash.encode()).hexdigest()[:16]


def _session_key(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def safe_next(target: str | None) -> str:
    """A same-site path to go to after signing in (never another site: no open redirect)."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return "/"
    return target


class SessionBook:
    """The sessions of ``AuthService``: kept apart because they are a resource of their own."""

    db: Database
    _signer: URLSafeTimedSerializer
    _tickets: URLSafeTimedSerializer
    _used_tickets: dict[str, float]
    _users: dict[int, User]
    _sessions: dict[str, UserSession]
    _written: dict[str, float]

    async def new_session(self, user: User) -> str:
        """Start a session for ``user``; returns the cookie value (the signed session id)."""
        assert user.id is not None
        session_id = secrets.token_urlsafe(32)
        now = time.time()
        record = UserSession(
            id=_session_key(session_id), user_id=user.id, created_at=now, last_seen_at=now,
            expires_at=now + SESSION_MAX_AGE,
        )  # fmt: skip
        await asyncio.to_thread(self._insert_session, record)
        self._sessions[record.id] = record
        self._written[record.id] = now
        return self._signer.dumps(session_id)

    def _insert_session(self, record: UserSession) -> None:
        with self.db.session() as s:
            s.add(UserSession.model_validate(record.model_dump()))
            s.commit()

    def _session(self, token: str | None, *, touch: bool = True) -> UserSession | None:
        """The live session a cookie value names (its last-seen time refreshed unless ``touch`` is
        false), else None."""
        if not token:
            return None
        try:
            session_id = self._signer.loads(token, max_age=SESSION_MAX_AGE)
        except BadSignature:  # includes expired
            return None
        if not isinstance(session_id, str):
            return None
        record = self._sessions.get(_session_key(session_id))
        now = time.time()
        if record is None or record.user_id not in self._users:
            return None
        if now >= record.expires_at or now - record.last_seen_at >= SESSION_IDLE_S:
            self._sessions.pop(record.id, None)  # the flush loop removes the stored row
            return None
        if touch:
            record.last_seen_at = now
        return record

    def user_from_session(self, token: str | None) -> User | None:
        record = self._session(token)
        return self._users.get(record.user_id) if record is not None else None

    def session_alive(self, token: str | None, *, touch: bool = False) -> bool:
        """Whether a cookie value still names a live session (for pages that stay open). Only
        ``touch`` (someone used the page) counts as activity: an open tab alone does not keep a
        session from ending when idle."""
        return self._session(token, touch=touch) is not None

    async def end_session(self, token: str | None) -> None:
        record = self._session(token)
        if record is None:
            return
        self._sessions.pop(record.id, None)
        self._written.pop(record.id, None)
        await asyncio.to_thread(self._delete_sessions, [record.id])

    def _drop_sessions(self, user_id: int) -> list[str]:
        """End every session of a user in memory, at once; returns their keys for the stored rows."""
        ended = [k for k, s in self._sessions.items() if s.user_id == user_id]
        for k in ended:
            self._sessions.pop(k, None)
            self._written.pop(k, None)
        return ended

    def _delete_sessions(self, keys: list[str]) -> None:
        with self.db.session() as s:
            s.exec(delete(UserSession).where(col(UserSession.id).in_(keys)))  # type: ignore[call-overload]
            s.commit()

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(SESSION_WRITE_S)
            try:
                await self._flush_sessions()
            except Exception:  # the database may be away for a moment; the next round retries
                log.warning("could not store session activity", exc_info=True)

    async def _flush_sessions(self) -> None:
        now = time.time()
        dead = [
            k
            for k, s in self._sessions.items()
            if now >= s.expires_at or now - s.last_seen_at >= SESSION_IDLE_S
        ]
        for k in dead:
            self._sessions.pop(k, None)
        seen = {
            k: s.last_seen_at for k, s in self._sessions.items() if self._written.get(k) != s.last_seen_at
        }
        await asyncio.to_thread(self._store_activity, seen, now)
        self._written.update(seen)
        for k in list(self._written):
            if k not in self._sessions:
                self._written.pop(k, None)

    def _store_activity(self, seen: dict[str, float], now: float) -> None:
        with self.db.session() as s:
            for key, at in seen.items():
                row = s.get(UserSession, key)
                if row is not None:
                    row.last_seen_at = at
                    s.add(row)
            s.exec(delete(UserSession).where(col(UserSession.expires_at) <= now))  # type: ignore[call-overload]
            s.exec(delete(UserSession).where(col(UserSession.last_seen_at) <= now - SESSION_IDLE_S))  # type: ignore[call-overload]
            s.commit()

    async def set_session_cookie(self, response: Response, conn: HTTPConnection, user: User) -> None:
        """Start a session for ``user`` and put its cookie on ``response``."""
        response.set_cookie(
            SESSION_COOKIE, await self.new_session(user), max_age=SESSION_MAX_AGE, path="/",
            httponly=True, samesite="lax", secure=is_https(conn),
        )  # fmt: skip

    def clear_session_cookie(self, response: Response, conn: HTTPConnection) -> None:
        response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="lax", secure=is_https(conn))

    def issue_ticket(self, user: User) -> str:
        """A one-time, one-minute ticket for ``GET /api/auth/session`` (pages cannot set cookies)."""
        return self._tickets.dumps({"u": user.id, "f": _fingerprint(user), "n": time.time_ns()})

    def session_url(self, user: User, next: str = "/") -> str:
        return f"/api/auth/session?ticket={quote(self.issue_ticket(user))}&next={quote(safe_next(next))}"

    def redeem_ticket(self, ticket: str) -> User | None:
        now = time.monotonic()
        self._used_tickets = {t: at for t, at in self._used_tickets.items() if now - at < 2 * TICKET_MAX_AGE}
        if not ticket or ticket in self._used_tickets:
            return None
        try:
            data = self._tickets.loads(ticket, max_age=TICKET_MAX_AGE)
        except BadSignature:
            return None
        user = self._users.get(data.get("u")) if isinstance(data, dict) else None  # type: ignore[arg-type]
        if user is None or data.get("f") != _fingerprint(user):
            return None
        self._used_tickets[ticket] = now
        return user
