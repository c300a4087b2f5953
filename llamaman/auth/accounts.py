"""Accounts, sign-in sessions and API keys: the service behind the auth middleware, the auth REST
routes and the sign-in pages.

Accounts are ``admin`` (changes things) or ``viewer`` (only looks); there is always at least one
admin. Passwords are hashed with argon2; API keys with SHA-256 (see ``apikeys.hash_key``).

Sessions live on the server (table ``usersession``, cached in memory): the cookie carries a random
session id signed with the secret key, and only the id's SHA-256 is stored. A session ends at sign-out,
when its user's password changes, when the user is removed, after ``SESSION_IDLE_S`` without a
request, and ``SESSION_MAX_AGE`` after sign-in whatever happens.

Sign-in attempts are counted before the password is checked (a reservation), per client address and
per username, so parallel guesses are throttled like sequential ones. The client address comes from
forwarded headers only when the peer is a proxy listed in ``LLAMAMAN_TRUSTED_PROXIES``.

For the pages: ``needs_setup()``, ``await create_first_admin(u, p)``, ``await verify_login(u, p, ip)``
(raises ``LoginThrottled``), then, since a page handler cannot set a cookie over its websocket,
``ui.navigate.to(auth.session_url(user, next="/"))``: a one-time ticket that ``GET /api/auth/session``
turns into the session cookie.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import ipaddress
import logging
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlmodel import col, delete, select
from starlette.datastructures import Headers
from starlette.requests import HTTPConnection, cookie_parser
from starlette.responses import Response

from llamaman.auth.apikeys import KeyStore, expiry_text
from llamaman.core.config import Settings
from llamaman.core.db import Database
from llamaman.core.identity import ROLES, Identity, Role, current_identity
from llamaman.core.redact import add_secrets
from llamaman.core.runtime import RuntimeConfig
from llamaman.core.secrets import storage_secret
from llamaman.core.tables import User, UserSession

if TYPE_CHECKING:
    from llamaman.core.exchange import Exchange

log = logging.getLogger(__name__)

SESSION_COOKIE = "llamaman_session"
# A session ends a week after sign-in, or after a day without any request, whichever comes first.
SESSION_MAX_AGE = 7 * 24 * 3600
SESSION_IDLE_S = 24 * 3600
# How stale a session's stored last-seen time may get: requests update it in memory, and it is
# written at most this often (it matters only for the idle expiry after a restart).
SESSION_WRITE_S = 60.0
TICKET_MAX_AGE = 60
MIN_PASSWORD = 8
# Failed sign-ins in a row from one client before it has to wait; the wait doubles with each further
# failure, and the count is forgotten after an hour without failures (or at a success). Each
# username has a count of its own, higher so that one client alone meets its own limit first.
THROTTLE_AFTER = 5
THROTTLE_USER_AFTER = 10
THROTTLE_BASE_S = 30.0
THROTTLE_MAX_S = 900.0
THROTTLE_FORGET_S = 3600.0


class LoginThrottled(Exception):
    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many failed sign-ins; try again in {retry_after} s")
        self.retry_after = retry_after


class SetupClosed(Exception):
    """The first admin exists already."""


class AccountError(Exception):
    """A refused account change; ``status`` is the HTTP status that says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Credential:
    """What a request presented. ``problem`` says why a presented credential is unusable."""

    identity: Identity | None = None
    problem: str | None = None


class LoginThrottle:
    def __init__(self, after: int = THROTTLE_AFTER) -> None:
        self.after = after
        self._clients: dict[str, tuple[int, float, float]] = {}  # key -> (failures, last, blocked until)

    def retry_after(self, client: str, now: float | None = None) -> int | None:
        now = time.monotonic() if now is None else now
        _, _, until = self._clients.get(client, (0, 0.0, 0.0))
        return max(1, round(until - now + 0.5)) if until > now else None

    def failed(self, client: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        failures, last, _ = self._clients.get(client, (0, 0.0, 0.0))
        if now - last > THROTTLE_FORGET_S:
            failures = 0
        failures += 1
        until = 0.0
        if failures >= self.after:
            until = now + min(THROTTLE_MAX_S, THROTTLE_BASE_S * 2 ** (failures - self.after))
        self._clients[client] = (failures, now, until)
        if len(self._clients) > 10_000:  # bounded, whoever is knocking
            self._clients = {k: v for k, v in self._clients.items() if now - v[1] <= THROTTLE_FORGET_S}

    def succeeded(self, client: str) -> None:
        self._clients.pop(client, None)


def _fingerprint(user: User) -> str:
    return hashlib.sha256(user.password_hash.encode()).hexdigest()[:16]


def _session_key(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def role_of(user: User) -> Role:
    return "admin" if user.is_admin else "viewer"


def safe_next(target: str | None) -> str:
    """A same-site path to go to after signing in (never another site: no open redirect)."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return "/"
    return target


def is_https(conn: HTTPConnection) -> bool:
    forwarded = conn.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return conn.url.scheme in ("https", "wss") or forwarded == "https"


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


def trusted_peer(addr: str, proxies: tuple[Network, ...]) -> bool:
    ip = _ip(addr)
    if ip is None:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip.version == net.version and ip in net for net in proxies)


def _forwarded_chain(headers: Headers) -> list[str]:
    """Client addresses the forwarded headers name, nearest proxy last (RFC 7239, then the de-facto
    X-Forwarded-For, then X-Real-IP)."""
    chain: list[str] = []
    for header in headers.getlist("forwarded"):
        for element in header.split(","):
            for pair in element.split(";"):
                name, _, value = pair.strip().partition("=")
                if name.strip().lower() == "for":
                    chain.append(_strip_port(value.strip().strip('"')))
    if chain:
        return chain
    for header in headers.getlist("x-forwarded-for"):
        chain += [_strip_port(a.strip()) for a in header.split(",") if a.strip()]
    if chain:
        return chain
    real = headers.get("x-real-ip", "").strip()
    return [_strip_port(real)] if real else []


def _strip_port(value: str) -> str:
    if value.startswith("["):  # "[2001:db8::1]:4711"
        return value[1:].partition("]")[0]
    if value.count(":") == 1:  # "192.0.2.1:4711"; a bare IPv6 address has more colons
        return value.partition(":")[0]
    return value


def client_address(conn: HTTPConnection, proxies: tuple[Network, ...]) -> str:
    """The address a request came from. Forwarded headers count only when the peer is a trusted
    proxy; then the nearest address in the chain that is not itself a trusted proxy is the client."""
    peer = conn.client.host if conn.client else "unknown"
    if not proxies or not trusted_peer(peer, proxies):
        return peer
    chain = _forwarded_chain(conn.headers)
    for addr in reversed(chain):
        if not trusted_peer(addr, proxies):
            return addr
    return chain[0] if chain else peer


class AuthService:
    def __init__(self, settings: Settings, db: Database, runtime: RuntimeConfig) -> None:
        self.settings = settings
        self.db = db
        self.runtime = runtime
        self.keys = KeyStore(db, settings.api_keys, settings.admin_api_keys)
        self.hasher = PasswordHasher()
        self.throttle = LoginThrottle()  # per client address
        self.user_throttle = LoginThrottle(THROTTLE_USER_AFTER)  # per username tried
        self.trusted_proxies = settings.trusted_proxy_networks
        secret = storage_secret(settings)
        self._signer = URLSafeTimedSerializer(secret, salt="llamaman.session-id")
        self._tickets = URLSafeTimedSerializer(secret, salt="llamaman.login-ticket")
        self._used_tickets: dict[str, float] = {}
        self._users: dict[int, User] = {}
        self._sessions: dict[str, UserSession] = {}  # by the SHA-256 of the id
        self._written: dict[str, float] = {}  # session key -> last_seen_at as stored
        self._setup_lock = asyncio.Lock()
        self._accounts_lock = asyncio.Lock()
        self._flusher: asyncio.Task[None] | None = None
        self._dummy: str | None = None
        add_secrets([settings.admin_password, settings.hf_token, settings.secret_key])
        add_secrets((settings.api_keys or "").split(","))
        add_secrets((settings.admin_api_keys or "").split(","))

    @property
    def require_auth(self) -> bool:
        return self.runtime.current.require_auth

    # ---- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        self._users = {u.id: u for u in await asyncio.to_thread(self._read_users) if u.id is not None}
        sessions = await asyncio.to_thread(self._read_sessions, time.time())
        self._sessions = {s.id: s for s in sessions if s.user_id in self._users}
        self._written = {k: s.last_seen_at for k, s in self._sessions.items()}
        await self.keys.load()
        self.keys.start()
        s = self.settings
        if s.admin_user and s.admin_password and self.needs_setup():
            user = await self.create_first_admin(s.admin_user, s.admin_password, check_strength=False)
            log.info("created the admin %r from LLAMAMAN_ADMIN_USER", user.username)
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_loop(), name="session-flush")

    async def stop(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        try:
            await self._flush_sessions()
        except Exception:  # losing a minute of last-seen times is no reason to fail a shutdown
            log.warning("could not store session activity at shutdown", exc_info=True)
        await self.keys.stop()

    def _read_users(self) -> list[User]:
        with self.db.session() as s:
            return list(s.exec(select(User)).all())

    def _read_sessions(self, now: float) -> list[UserSession]:
        with self.db.session() as s:
            s.exec(delete(UserSession).where(col(UserSession.expires_at) <= now))  # type: ignore[call-overload]
            s.commit()
            return list(s.exec(select(UserSession)).all())

    # ---- accounts --------------------------------------------------------------------------------
    def needs_setup(self) -> bool:
        return not self._users

    def user_by_name(self, username: str) -> User | None:
        return next((u for u in self._users.values() if u.username == username), None)

    def users(self) -> list[User]:
        return sorted(self._users.values(), key=lambda u: (u.created_at, u.id or 0))

    def _admins(self) -> list[User]:
        return [u for u in self._users.values() if u.is_admin]

    def _check_new(self, username: str, password: str, check_strength: bool = True) -> str:
        username = username.strip()
        if not username or len(username) > 64:
            raise ValueError("the username must be 1 to 64 characters")
        if check_strength and len(password) < MIN_PASSWORD:
            raise ValueError(f"the password must be at least {MIN_PASSWORD} characters")
        if not password:
            raise ValueError("the password must not be empty")
        return username

    async def create_first_admin(self, username: str, password: str, *, check_strength: bool = True) -> User:
        """The first account; raises SetupClosed once any user exists, ValueError on bad input."""
        username = self._check_new(username, password, check_strength)
        async with self._setup_lock:
            if not self.needs_setup():
                raise SetupClosed("LlamaMan is set up already; sign in instead")
            hashed = await asyncio.to_thread(self.hasher.hash, password)
            user = User(username=username, password_hash=hashed, is_admin=True)
            user = await asyncio.to_thread(self._insert_user, user, True)
            assert user.id is not None
            self._users[user.id] = user
            return user

    async def create_user(self, username: str, password: str, role: Role = "viewer") -> User:
        """Another account (by an admin). AccountError 409 when the name is taken, ValueError on bad
        input."""
        if role not in ROLES:
            raise ValueError(f"the role must be one of {', '.join(ROLES)}")
        username = self._check_new(username, password)
        hashed = await asyncio.to_thread(self.hasher.hash, password)
        async with self._accounts_lock:
            if self.user_by_name(username) is not None:
                raise AccountError(409, f"an account named '{username}' exists already")
            user = User(username=username, password_hash=hashed, is_admin=role == "admin")
            user = await asyncio.to_thread(self._insert_user, user, False)
            assert user.id is not None
            self._users[user.id] = user
        log.info("account %r (%s) created", username, role)
        return user

    def _insert_user(self, user: User, first: bool) -> User:
        with self.db.session() as s:
            if first and s.exec(select(User)).first() is not None:  # another process got there first
                raise SetupClosed("LlamaMan is set up already; sign in instead")
            if s.exec(select(User).where(User.username == user.username)).first() is not None:
                raise AccountError(409, f"an account named '{user.username}' exists already")
            s.add(user)
            s.commit()
            s.refresh(user)
            return user

    def _existing(self, username: str) -> User:
        user = self.user_by_name(username)
        if user is None:
            raise AccountError(404, f"no account named '{username}'")
        return user

    async def remove_user(self, username: str) -> None:
        """Remove an account and end its sessions at once; the last admin stays."""
        async with self._accounts_lock:
            user = self._existing(username)
            if user.is_admin and len(self._admins()) == 1:
                raise AccountError(409, "the last admin cannot be removed; make another account admin first")
            assert user.id is not None
            # Out of memory first: the account counts for nothing from here on, even mid-write.
            self._users.pop(user.id, None)
            self._drop_sessions(user.id)
            await asyncio.to_thread(self._delete_user, user.id)
        log.info("account %r removed", username)

    def _delete_user(self, user_id: int) -> None:
        with self.db.session() as s:
            s.exec(delete(UserSession).where(col(UserSession.user_id) == user_id))  # type: ignore[call-overload]
            row = s.get(User, user_id)
            if row is not None:
                s.delete(row)
            s.commit()

    async def set_role(self, username: str, role: Role) -> User:
        """Make an account admin or viewer; the last admin cannot become a viewer. Takes effect on the
        account's next request (roles are read from the account, not from its cookie)."""
        if role not in ROLES:
            raise ValueError(f"the role must be one of {', '.join(ROLES)}")
        async with self._accounts_lock:
            user = self._existing(username)
            if user.is_admin and role != "admin" and len(self._admins()) == 1:
                raise AccountError(
                    409, "the last admin cannot become a viewer; make another account admin first"
                )
            user.is_admin = role == "admin"
            await asyncio.to_thread(self._update_user, user)
        log.info("account %r is now %s", username, role)
        return user

    def _update_user(self, user: User) -> None:
        with self.db.session() as s:
            row = s.get(User, user.id)
            if row is not None:
                row.is_admin = user.is_admin
                row.password_hash = user.password_hash
                s.add(row)
                s.commit()

    async def change_password(self, username: str, current: str | None, new: str) -> User:
        """Set a new password and end every session of the account. ``current`` must be the account's
        password (checked under the sign-in throttle); None when an admin sets another's password."""
        user = self._existing(username)
        self._check_new(username, new)
        if current is not None:
            key = username.strip().casefold()
            wait = self.user_throttle.retry_after(key)
            if wait is not None:
                raise LoginThrottled(wait)
            self.user_throttle.failed(key)  # reserved now; forgotten below when it was right
            if not await asyncio.to_thread(self._check_password, user, current):
                raise AccountError(403, "the current password is wrong")
            self.user_throttle.succeeded(key)
        hashed = await asyncio.to_thread(self.hasher.hash, new)
        async with self._accounts_lock:
            user.password_hash = hashed
            await asyncio.to_thread(self._update_user, user)
            assert user.id is not None
            ended = self._drop_sessions(user.id)
            if ended:
                await asyncio.to_thread(self._delete_sessions, ended)
        log.info("password of %r changed; its sessions ended", username)
        return user

    async def verify_login(self, username: str, password: str, client_ip: str) -> User | None:
        """The user when the password is right; raises LoginThrottled while the client or the username
        must wait.

        The attempt is counted as failed before the (slow) password check and forgotten only when it
        succeeds, so many guesses sent at once meet the limit as if they came one by one."""
        name = username.strip()
        name_key = name.casefold()[:64]
        waits = [
            w for w in (self.throttle.retry_after(client_ip), self.user_throttle.retry_after(name_key)) if w
        ]
        if waits:
            raise LoginThrottled(max(waits))
        self.throttle.failed(client_ip)
        self.user_throttle.failed(name_key)
        user = self.user_by_name(name)
        ok = await asyncio.to_thread(self._check_password, user, password)
        if not ok or user is None or user.id not in self._users:
            # Not the username: people type their password into that field too.
            log.warning("failed sign-in from %s", client_ip)
            return None
        self.throttle.succeeded(client_ip)
        self.user_throttle.succeeded(name_key)
        return user

    def client_address(self, conn: HTTPConnection) -> str:
        return client_address(conn, self.trusted_proxies)

    def _dummy_hash(self) -> str:
        # Verifying against this when the user does not exist takes as long as a real check, so the
        # answer's timing does not tell which usernames exist. Made on first use: hashing costs
        # about half a second, which every start would otherwise pay.
        if self._dummy is None:
            self._dummy = self.hasher.hash("not a password")
        return self._dummy

    def _check_password(self, user: User | None, password: str) -> bool:
        try:
            self.hasher.verify(user.password_hash if user else self._dummy_hash(), password)
        except (VerificationError, InvalidHashError):
            return False
        if user is not None and self.hasher.check_needs_rehash(user.password_hash):
            self._rehash(user, password)
        return user is not None

    def _rehash(self, user: User, password: str) -> None:
        user.password_hash = self.hasher.hash(password)
        with self.db.session() as s:
            row = s.get(User, user.id)
            if row is not None:
                row.password_hash = user.password_hash
                s.add(row)
                s.commit()

    # ---- sessions --------------------------------------------------------------------------------
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
        user = self._users.get(data.get("u")) if isinstance(data, dict) else None
        if user is None or data.get("f") != _fingerprint(user):
            return None
        self._used_tickets[ticket] = now
        return user

    # ---- who is asking ---------------------------------------------------------------------------
    def authenticate(self, headers: Headers, *, cookie: bool = True) -> Credential:
        """The identity a request's headers carry. A presented key wins over a session cookie;
        ``cookie=False`` (the proxy and instance ports) ignores the cookie altogether."""
        key, problem = _presented_key(headers)
        if key is not None or problem is not None:
            if problem is not None:
                return Credential(problem=problem)
            record = self.keys.verify(key or "")
            if record is None:
                return Credential(problem="invalid API key")
            if record.revoked:
                return Credential(problem="this API key has been revoked")
            if record.expires_at is not None and time.time() >= record.expires_at:
                return Credential(problem=f"this API key expired on {expiry_text(record.expires_at)}")
            self.keys.touch(record)
            return Credential(identity=record.identity())
        raw = headers.get("cookie") if cookie else None
        if raw:
            user = self.user_from_session(cookie_parser(raw).get(SESSION_COOKIE))
            if user is not None:
                return Credential(identity=user_identity(user))
        return Credential()

    def identity_of(self, conn: HTTPConnection) -> Identity | None:
        """For pages and routes: the identity the middleware found, else the request's own cookie."""
        found = conn.scope.get("state", {}).get("identity")
        return found if isinstance(found, Identity) else self.authenticate(conn.headers).identity

    # ---- usage -----------------------------------------------------------------------------------
    def observe(self, ex: Exchange) -> None:
        """Relay observer: count tokens against the key that made the request."""
        identity = getattr(ex, "identity", None) or current_identity()
        if isinstance(identity, Identity) and identity.key_id:
            self.keys.record_usage(identity.key_id, ex.model, ex.prompt_tokens, ex.completion_tokens)


def user_identity(user: User) -> Identity:
    return Identity(kind="user", name=user.username, user=user.username, role=role_of(user))


def user_view(user: User) -> dict[str, Any]:
    return {
        "id": user.id,
        "username": user.username,
        "role": role_of(user),
        "is_admin": user.is_admin,
        "created_at": user.created_at,
    }


def _presented_key(headers: Headers) -> tuple[str | None, str | None]:
    """(key, None), (None, why it is malformed) or (None, None) when no key was presented."""
    header = headers.get("authorization")
    if header is not None:
        scheme, _, value = header.strip().partition(" ")
        value = value.strip()
        if scheme.lower() == "bearer":
            return (value, None) if value else (None, "empty bearer token")
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(value, validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                return None, "malformed basic credentials"
            _, sep, password = decoded.partition(":")
            if not sep or not password:
                return None, "basic credentials need the API key as password"
            return password, None
        return None, "unsupported authorization scheme (use Bearer)"
    key = headers.get("x-api-key")
    if key is not None:
        return (key.strip(), None) if key.strip() else (None, "empty x-api-key")
    return None, None
