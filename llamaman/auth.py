"""Accounts, sign-in sessions and API keys: the service behind the auth middleware, the auth REST
routes and the sign-in pages.

Sessions are signed cookies (no server-side store): the secret key signs the user id and a
fingerprint of the password hash, so changing the password ends every session. Passwords are
hashed with argon2; API keys with SHA-256 (see ``apikeys.hash_key``).

For the pages: ``needs_setup()``, ``await create_first_admin(u, p)``, ``await verify_login(u, p, ip)``
(raises ``LoginThrottled``), then, since a page handler cannot set a cookie over its websocket,
``ui.navigate.to(auth.session_url(user, next="/"))``: a one-time ticket that ``GET /api/auth/session``
turns into the cookie.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlmodel import select
from starlette.datastructures import Headers
from starlette.requests import HTTPConnection, cookie_parser
from starlette.responses import Response

from llamaman.apikeys import KeyStore, expiry_text
from llamaman.config import Settings
from llamaman.db import Database
from llamaman.identity import Identity, current_identity
from llamaman.redact import add_secrets
from llamaman.runtime import RuntimeConfig
from llamaman.secrets import storage_secret
from llamaman.tables import User

if TYPE_CHECKING:
    from llamaman.proxy.relay import Exchange

log = logging.getLogger(__name__)

SESSION_COOKIE = "llamaman_session"
SESSION_MAX_AGE = 14 * 24 * 3600
TICKET_MAX_AGE = 60
MIN_PASSWORD = 8
# Failed sign-ins in a row from one client before it has to wait; the wait doubles with each further
# failure, and the count is forgotten after an hour without failures (or at a success).
THROTTLE_AFTER = 5
THROTTLE_BASE_S = 30.0
THROTTLE_MAX_S = 900.0
THROTTLE_FORGET_S = 3600.0


class LoginThrottled(Exception):
    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many failed sign-ins; try again in {retry_after} s")
        self.retry_after = retry_after


class SetupClosed(Exception):
    """The first admin exists already."""


@dataclass
class Credential:
    """What a request presented. ``problem`` says why a presented credential is unusable."""

    identity: Identity | None = None
    problem: str | None = None


class LoginThrottle:
    def __init__(self) -> None:
        self._clients: dict[str, tuple[int, float, float]] = {}  # ip -> (failures, last, blocked until)

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
        if failures >= THROTTLE_AFTER:
            until = now + min(THROTTLE_MAX_S, THROTTLE_BASE_S * 2 ** (failures - THROTTLE_AFTER))
        self._clients[client] = (failures, now, until)
        if len(self._clients) > 10_000:  # bounded, whoever is knocking
            self._clients = {k: v for k, v in self._clients.items() if now - v[1] <= THROTTLE_FORGET_S}

    def succeeded(self, client: str) -> None:
        self._clients.pop(client, None)


def _fingerprint(user: User) -> str:
    return hashlib.sha256(user.password_hash.encode()).hexdigest()[:16]


def safe_next(target: str | None) -> str:
    """A same-site path to go to after signing in (never another site: no open redirect)."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return "/"
    return target


def is_https(conn: HTTPConnection) -> bool:
    forwarded = conn.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return conn.url.scheme in ("https", "wss") or forwarded == "https"


class AuthService:
    def __init__(self, settings: Settings, db: Database, runtime: RuntimeConfig) -> None:
        self.settings = settings
        self.db = db
        self.runtime = runtime
        self.keys = KeyStore(db, settings.api_keys, settings.admin_api_keys)
        self.hasher = PasswordHasher()
        self.throttle = LoginThrottle()
        secret = storage_secret(settings)
        self._sessions = URLSafeTimedSerializer(secret, salt="llamaman.session")
        self._tickets = URLSafeTimedSerializer(secret, salt="llamaman.login-ticket")
        self._used_tickets: dict[str, float] = {}
        self._users: dict[int, User] = {}
        self._setup_lock = asyncio.Lock()
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
        await self.keys.load()
        self.keys.start()
        s = self.settings
        if s.admin_user and s.admin_password and self.needs_setup():
            user = await self.create_first_admin(s.admin_user, s.admin_password, check_strength=False)
            log.info("created the admin %r from LLAMAMAN_ADMIN_USER", user.username)

    async def stop(self) -> None:
        await self.keys.stop()

    def _read_users(self) -> list[User]:
        with self.db.session() as s:
            return list(s.exec(select(User)).all())

    # ---- accounts --------------------------------------------------------------------------------
    def needs_setup(self) -> bool:
        return not self._users

    def user_by_name(self, username: str) -> User | None:
        return next((u for u in self._users.values() if u.username == username), None)

    async def create_first_admin(self, username: str, password: str, *, check_strength: bool = True) -> User:
        """The first account; raises SetupClosed once any user exists, ValueError on bad input."""
        username = username.strip()
        if not username or len(username) > 64:
            raise ValueError("the username must be 1 to 64 characters")
        if check_strength and len(password) < MIN_PASSWORD:
            raise ValueError(f"the password must be at least {MIN_PASSWORD} characters")
        if not password:
            raise ValueError("the password must not be empty")
        async with self._setup_lock:
            if not self.needs_setup():
                raise SetupClosed("LlamaMan is set up already; sign in instead")
            hashed = await asyncio.to_thread(self.hasher.hash, password)
            user = User(username=username, password_hash=hashed, is_admin=True)
            user = await asyncio.to_thread(self._insert_user, user)
            assert user.id is not None
            self._users[user.id] = user
            return user

    def _insert_user(self, user: User) -> User:
        with self.db.session() as s:
            if s.exec(select(User)).first() is not None:  # another process got there first
                raise SetupClosed("LlamaMan is set up already; sign in instead")
            s.add(user)
            s.commit()
            s.refresh(user)
            return user

    async def verify_login(self, username: str, password: str, client_ip: str) -> User | None:
        """The user when the password is right; raises LoginThrottled while the client must wait."""
        wait = self.throttle.retry_after(client_ip)
        if wait is not None:
            raise LoginThrottled(wait)
        user = self.user_by_name(username.strip())
        ok = await asyncio.to_thread(self._check_password, user, password)
        if not ok or user is None:
            self.throttle.failed(client_ip)
            # Not the username: people type their password into that field too.
            log.warning("failed sign-in from %s", client_ip)
            return None
        self.throttle.succeeded(client_ip)
        return user

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
    def session_token(self, user: User) -> str:
        return self._sessions.dumps({"u": user.id, "f": _fingerprint(user)})

    def user_from_session(self, token: str | None) -> User | None:
        if not token:
            return None
        try:
            data = self._sessions.loads(token, max_age=SESSION_MAX_AGE)
        except BadSignature:  # includes expired
            return None
        user = self._users.get(data.get("u")) if isinstance(data, dict) else None
        return user if user is not None and data.get("f") == _fingerprint(user) else None

    def set_session_cookie(self, response: Response, conn: HTTPConnection, user: User) -> None:
        response.set_cookie(
            SESSION_COOKIE, self.session_token(user), max_age=SESSION_MAX_AGE, path="/",
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
    def authenticate(self, headers: Headers) -> Credential:
        """The identity a request's headers carry. A presented key wins over a session cookie."""
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
        cookie = headers.get("cookie")
        if cookie:
            user = self.user_from_session(cookie_parser(cookie).get(SESSION_COOKIE))
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
    return Identity(kind="user", name=user.username, user=user.username)


def user_view(user: User) -> dict[str, Any]:
    return {
        "id": user.id,
        "username": user.username,
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
