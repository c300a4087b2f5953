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
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from itsdangerous import URLSafeTimedSerializer
from sqlmodel import col, delete, select
from starlette.datastructures import Headers
from starlette.requests import HTTPConnection, cookie_parser

from llamaman.auth.apikeys import KeyStore, expiry_text
from llamaman.auth.clients import THROTTLE_USER_AFTER, LoginThrottle, client_address
from llamaman.auth.sessions import SESSION_COOKIE, SessionBook
from llamaman.core.config import Settings
from llamaman.core.db import Database
from llamaman.core.errors import Conflict, Forbidden, LlamaManError, NotFound, Throttled
from llamaman.core.identity import ROLES, Identity, Role, current_identity
from llamaman.core.redact import add_secrets
from llamaman.core.runtime import RuntimeConfig
from llamaman.core.secrets import storage_secret
from llamaman.core.tables import User, UserSession

if TYPE_CHECKING:
    from llamaman.core.exchange import Exchange

log = logging.getLogger(__name__)

MIN_PASSWORD = 8


class LoginThrottled(Throttled):
    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many failed sign-ins; try again in {retry_after} s", retry_after=retry_after)
        self.retry_after: int = retry_after


class SetupClosed(Forbidden):
    """The first admin exists already."""


class AccountError(LlamaManError):
    """A refused account change; raised as one of the kinds below."""


class AccountForbidden(AccountError, Forbidden):
    pass


class AccountNotFound(AccountError, NotFound):
    pass


class AccountConflict(AccountError, Conflict):
    pass


@dataclass
class Credential:
    """What a request presented. ``problem`` says why a presented credential is unusable."""

    identity: Identity | None = None
    problem: str | None = None


def role_of(user: User) -> Role:
    return "admin" if user.is_admin else "viewer"


class AuthService(SessionBook):
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
        """Another account (by an admin). AccountConflict when the name is taken, ValueError on bad
        input."""
        if role not in ROLES:
            raise ValueError(f"the role must be one of {', '.join(ROLES)}")
        username = self._check_new(username, password)
        hashed = await asyncio.to_thread(self.hasher.hash, password)
        async with self._accounts_lock:
            if self.user_by_name(username) is not None:
                raise AccountConflict(f"an account named '{username}' exists already")
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
                raise AccountConflict(f"an account named '{user.username}' exists already")
            s.add(user)
            s.commit()
            s.refresh(user)
            return user

    def _existing(self, username: str) -> User:
        user = self.user_by_name(username)
        if user is None:
            raise AccountNotFound(f"no account named '{username}'")
        return user

    async def remove_user(self, username: str) -> None:
        """Remove an account and end its sessions at once; the last admin stays."""
        async with self._accounts_lock:
            user = self._existing(username)
            if user.is_admin and len(self._admins()) == 1:
                raise AccountConflict("the last admin cannot be removed; make another account admin first")
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
                raise AccountConflict(
                    "the last admin cannot become a viewer; make another account admin first"
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
                raise AccountForbidden("the current password is wrong")
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
