"""Refused and failed model requests in the activity log, with the reason their client was given.

The routes record every request they hand to a llama-server. What never gets that far (no key, a
wrong scope, a body too large or not JSON, a model that does not exist, a key over its rate or
quota) is answered by the auth middleware, the body guard or a route's early refusal; this ASGI
layer, outside all of them, records those answers as activity rows (status, endpoint, model, key
and the message), unless the route recorded the request itself.
"""

from __future__ import annotations

import contextvars
import json
import time
import weakref
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llamaman.auth.access import MODEL_SURFACE, Surface, classify
from llamaman.core.exchange import FORWARDED_BY, Exchange, new_request_id
from llamaman.gateway.bodies import json_of, model_names
from llamaman.gateway.dialects import route_path

if TYPE_CHECKING:
    from llamaman.services import Services

# The exchanges the routes recorded while the current request ran (one list per request).
_RECORDED: contextvars.ContextVar[list[Exchange] | None] = contextvars.ContextVar(
    "recorded_exchanges", default=None
)
_WATCHED: weakref.WeakSet[Any] = weakref.WeakSet()
_BODY_LIMIT = 16 * 1024  # an error body is short; nothing past this is kept to read its message


def _note(ex: Exchange) -> None:
    recorded = _RECORDED.get()
    if recorded is not None:
        recorded.append(ex)


def reason_of(body: bytes) -> str:
    """The message of an error body in any dialect (Ollama, OpenAI, Anthropic, the REST API's)."""
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return body[:500].decode(errors="replace").strip()
    if not isinstance(obj, dict):
        return ""
    error = obj.get("error", obj.get("detail"))
    if isinstance(error, dict):
        error = error.get("message") or error.get("type")
    return str(error) if error else ""


def record_refusal(services: Services, ex: Exchange, body: bytes, model: str, identity: Any) -> None:
    """The activity row (and metrics) of a refused request: ``ex`` with its status, ``body`` the
    answer its client was given."""
    ex.error = reason_of(body) or f"HTTP {ex.status}"
    ex.model = model
    ex.identity = identity
    ex.finished = time.monotonic()
    # The activity log and the metrics only: a refusal used none of its key's tokens.
    services.telemetry.observe(ex)


class RefusalRecorder:
    def __init__(self, app: ASGIApp, services: Services, surface: Surface = "main") -> None:
        self.app = app
        self.services = services
        self.surface: Surface = surface
        relay = services.relay
        if relay not in _WATCHED:
            _WATCHED.add(relay)
            relay.add_claim(_note)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or classify(route_path(scope), self.surface) not in MODEL_SURFACE:
            await self.app(scope, receive, send)
            return
        # The record itself is made only for a refusal: most requests are answered, and an
        # ``Exchange`` made for each of them was a measurable share of a small request's cost.
        started = time.monotonic()
        forwarded = FORWARDED_BY.get()
        status = 0
        recorded: list[Exchange] = []
        token = _RECORDED.set(recorded)
        body = bytearray()

        async def watched(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body" and status >= 400 and len(body) < _BODY_LIMIT:
                body.extend(message.get("body", b"")[: _BODY_LIMIT - len(body)])
            await send(message)

        try:
            await self.app(scope, receive, watched)
        finally:
            _RECORDED.reset(token)
            if status >= 400 and not recorded:
                ex = Exchange(
                    "", route_path(scope), started=started, status=status, id=new_request_id(), via=forwarded
                )
                self._record(ex, scope, bytes(body))

    def _record(self, ex: Exchange, scope: Scope, body: bytes) -> None:
        record_refusal(self.services, ex, body, self._model(scope), scope.get("state", {}).get("identity"))

    def _model(self, scope: Scope) -> str:
        obj = json_of(scope)  # what the body guard parsed, if it got that far
        if isinstance(obj, dict):
            names = model_names(obj, ollama=route_path(scope).startswith("/api/"))
            if names:
                return names[0]
        query = scope.get("query_string", b"").decode("latin-1")
        for part in query.split("&"):
            if part.startswith("model="):
                return part[len("model=") :]
        return ""
