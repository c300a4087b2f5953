"""Who is making the current request: set by the auth middleware, read by whatever runs below it.

Kept free of LlamaMan imports so the relay, the proxy surfaces and the activity log can read it
without import cycles. The middleware also puts the identity into ``scope["state"]["identity"]``
(``request.state.identity``); the context variable carries it where no request is at hand, such as
the relay's observer called at the end of a stream.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Literal

Role = Literal["admin", "viewer"]
ROLES: tuple[Role, ...] = ("admin", "viewer")


@dataclass(frozen=True, slots=True)
class Identity:
    """An API key or a signed-in user; ``allowed_models`` empty means every model. ``role`` is a
    user's (``admin`` or ``viewer``: a viewer may only look); None for API keys."""

    kind: Literal["key", "user"]
    name: str
    key_id: str | None = None
    user: str | None = None
    allowed_models: tuple[str, ...] = field(default=())
    rpm_limit: int = 0
    role: Role | None = None

    @property
    def read_only(self) -> bool:
        return self.role == "viewer"

    @property
    def restricted(self) -> bool:
        return bool(self.allowed_models)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "key_id": self.key_id,
            "user": self.user,
            "allowed_models": list(self.allowed_models),
            "rpm_limit": self.rpm_limit,
            "role": self.role,
        }


CURRENT_IDENTITY: ContextVar[Identity | None] = ContextVar("llamaman_identity", default=None)


def current_identity() -> Identity | None:
    return CURRENT_IDENTITY.get()
