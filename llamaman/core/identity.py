"""Who is making the current request: set by the auth middleware, read by whatever runs below it.

Kept free of LlamaMan imports so the relay, the proxy surfaces and the activity log can read it
without import cycles. The middleware also puts the identity into ``scope["state"]["identity"]``
(``request.state.identity``); the context variable carries it where no request is at hand, such as
the relay's observer called at the end of a stream.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Literal

# What an API key may reach: "inference" keys the model endpoints only, "admin" keys LlamaMan too.
KeyScope = Literal["inference", "admin"]
KEY_SCOPES: tuple[KeyScope, ...] = ("inference", "admin")
Role = Literal["admin", "viewer"]
ROLES: tuple[Role, ...] = ("admin", "viewer")


@dataclass(frozen=True, slots=True)
class Identity:
    """An API key or a signed-in user; ``allowed_models`` empty means every model.

    ``scope`` is the key's scope and None for a signed-in user. ``expires_at`` (Unix seconds) and
    ``daily_token_quota`` (0 = none) only ever apply to keys. ``role`` is a user's (``admin`` or
    ``viewer``: a viewer may only look); None for API keys.
    """

    kind: Literal["key", "user"]
    name: str
    key_id: str | None = None
    user: str | None = None
    allowed_models: tuple[str, ...] = field(default=())
    rpm_limit: int = 0
    scope: KeyScope | None = None
    expires_at: float | None = None
    daily_token_quota: int = 0
    role: Role | None = None
    priority: int = 0  # keys only: who is served first when models must swap; higher first

    @property
    def read_only(self) -> bool:
        return self.role == "viewer"

    @property
    def restricted(self) -> bool:
        return bool(self.allowed_models)

    @property
    def can_manage(self) -> bool:
        """May change or inspect the box (REST API, UI, deleting/copying/pulling models, launch
        arguments): a signed-in user, or an admin key that is not limited to some models (a limited
        key could otherwise mint itself an unlimited one)."""
        if self.kind == "user":
            return True
        return self.scope == "admin" and not self.restricted

    def may_use(self, names: Iterable[str]) -> bool:
        """Whether any of ``names`` (one model's names: listed name, file stem, path, alias) matches
        the allow-list; globs match case-insensitively, ``*`` also crosses ``/``."""
        if not self.allowed_models:
            return True
        return names_allowed(self.allowed_models, names)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "key_id": self.key_id,
            "user": self.user,
            "allowed_models": list(self.allowed_models),
            "rpm_limit": self.rpm_limit,
            "scope": self.scope,
            "expires_at": self.expires_at,
            "daily_token_quota": self.daily_token_quota,
            "role": self.role,
            "priority": self.priority,
        }


def names_allowed(patterns: Iterable[str], names: Iterable[str]) -> bool:
    folded = [n.strip().casefold() for n in names if n and n.strip()]
    return any(fnmatch.fnmatchcase(n, p.casefold()) for p in patterns for n in folded)


CURRENT_IDENTITY: ContextVar[Identity | None] = ContextVar("llamaman_identity", default=None)


def current_identity() -> Identity | None:
    return CURRENT_IDENTITY.get()


def request_identity(scope: Mapping[str, Any]) -> Identity | None:
    """The identity the auth middleware found for this ASGI scope (None: anonymous, or unguarded)."""
    found = (scope.get("state") or {}).get("identity")
    return found if isinstance(found, Identity) else None
