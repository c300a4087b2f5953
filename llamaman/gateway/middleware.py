"""The guard in front of every LlamaMan surface: the main port, the proxy port, each instance port.

A pure ASGI middleware (Starlette's BaseHTTPMiddleware would buffer streamed answers): it classifies
the path with ``access.classify``, checks the credentials, and answers 401/403/429 in the dialect of
the endpoint, or passes the request on with the identity in ``scope["state"]["identity"]`` and in
``identity.CURRENT_IDENTITY``. The apps behind it know nothing of authentication.

Wiring, one call per app: ``wrap_with_auth(app, services, "main" | "proxy" | "instance")``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote, urlsplit

from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llamaman.auth.access import ADMIN_ONLY, MODEL_SURFACE, Access, Surface, classify
from llamaman.auth.clients import trusted_peer
from llamaman.cluster.forward import NODE_HEADER, VIA_HEADER, secret_matches
from llamaman.core.exchange import FORWARDED_BY
from llamaman.core.identity import CURRENT_IDENTITY, Identity, names_allowed
from llamaman.gateway.bodies import BodyError, BodyGuard, ensure_body, model_names, parsed_body
from llamaman.gateway.dialects import dialect_body, route_path
from llamaman.gateway.errors import DatabaseErrorGuard
from llamaman.gateway.refusals import RefusalRecorder

if TYPE_CHECKING:
    from llamaman.services import Services

log = logging.getLogger(__name__)

_WITH_BODY = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# A viewer changes its own password; the model endpoints that manage models are closed to viewers.
_VIEWER_MAY = frozenset({"/api/auth/password"})
_MODEL_MANAGEMENT = frozenset(
    {"/api/delete", "/api/copy", "/api/pull", "/api/push", "/api/create", "/models/load", "/models/unload"}
)
# Answers that give a request's place in its key's per-minute budget back: it was refused (a model the
# key may not use, one hidden from it, a quota), so it used nothing.
_REFUNDED = frozenset({401, 403, 404, 415, 429})


def wrap_with_auth(
    app: ASGIApp, services: Services, surface: Surface, *, instance_id: str | None = None
) -> ASGIApp:
    """Guard ``app``; a Starlette/FastAPI app is guarded in place and returned (its type unchanged)."""
    # The body guard sits inside: credentials are checked before a body is read past its headers.
    # Database errors are caught outside both, so a busy database answers 503 even mid-check.
    # Refusals of model requests (here or in a route) are recorded by the layer around the auth.
    if isinstance(app, Starlette):
        app.add_middleware(BodyGuard, surface=surface)
        app.add_middleware(AuthMiddleware, services=services, surface=surface, instance_id=instance_id)
        app.add_middleware(RefusalRecorder, services=services, surface=surface)
        app.add_middleware(DatabaseErrorGuard, surface=surface)
        return app
    guarded = BodyGuard(app, surface=surface)
    checked = AuthMiddleware(guarded, services=services, surface=surface, instance_id=instance_id)
    recorded = RefusalRecorder(checked, services=services, surface=surface)
    return DatabaseErrorGuard(recorded, surface=surface)


class AuthMiddleware:
    def __init__(
        self, app: ASGIApp, services: Services, surface: Surface = "main", instance_id: str | None = None
    ) -> None:
        self.app = app
        self.services = services
        self.surface: Surface = surface
        self.instance_id = instance_id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        path = route_path(scope)
        access = classify(path, self.surface)
        if access is Access.OPEN:
            await self._pass(scope, receive, send, None)
            return
        if access is Access.MODEL and self.surface != "instance":
            via = self._forwarded_by(scope)
            if via is not None:
                await self._pass_forwarded(scope, receive, send, access, path, via)
                return
        auth = self.services.auth
        # The session cookie counts on the main port only, where the UI lives: a page on any other
        # port of the same host is same-site and would have the browser send it along.
        credential = auth.authenticate(Headers(scope=scope), cookie=self.surface == "main")
        identity = credential.identity
        # Known before any refusal below, so the activity log names the key a refusal was for.
        scope.setdefault("state", {})["identity"] = identity
        if identity is None:
            if access in ADMIN_ONLY or auth.require_auth:
                message = credential.problem or self._hint(access)
                await self._deny(scope, receive, send, access, path, 401, message)
                return
            if await self._refused_not_json(scope, receive, send, access, path):
                return
            await self._pass(scope, receive, send, None)  # open: a stale or wrong key is no reason to refuse
            return
        if access in ADMIN_ONLY and not identity.can_manage:
            await self._deny(scope, receive, send, access, path, 403, _scope_refusal(identity, access))
            return
        if identity.kind == "user" and scope["type"] == "http":
            refused_status, why = self._cookie_change_refused(scope)
            if refused_status:
                await self._deny(scope, receive, send, access, path, refused_status, why)
                return
            if identity.read_only and self._changes(scope, access, path):
                message = "this account is a viewer: it can look but not change anything"
                await self._deny(scope, receive, send, access, path, 403, message)
                return
        # Refusals for the request itself come before the rate and the quota are counted: they use
        # neither.
        if await self._refused_not_json(scope, receive, send, access, path):
            return
        if access is Access.MODEL and identity.restricted and scope["type"] == "http":
            receive, refused = await self._check_models(scope, receive, path, identity)
            if refused is not None:
                message = f"this API key may not use the model '{refused}'"
                await self._deny(scope, receive, send, access, path, 403, message)
                return
        keys = auth.keys
        if access is Access.MODEL and identity.daily_token_quota:
            wait = keys.quota_wait(identity)
            if wait is not None:
                message = (
                    f"this API key has used its daily quota of {identity.daily_token_quota} tokens; "
                    "it starts again at 00:00 UTC"
                )
                await self._deny(scope, receive, send, access, path, 429, message, {"Retry-After": str(wait)})
                return
        if identity.key_id and identity.rpm_limit:
            at = time.monotonic()
            wait = keys.rates.check(identity.key_id, identity.rpm_limit, now=at)
            minute = None
            if wait is None and self.services.cluster.clustered:
                # One budget whichever nodes the key calls: the shared counter has the last word.
                wait, minute = await self.services.cluster.rates.check(identity.key_id, identity.rpm_limit)
                if wait is not None:
                    keys.rates.refund(identity.key_id, at)
            if wait is not None:
                message = f"this API key is limited to {identity.rpm_limit} requests per minute"
                await self._deny(scope, receive, send, access, path, 429, message, {"Retry-After": str(wait)})
                return
            if scope["type"] == "http":
                send = self._refund_if_refused(send, identity.key_id, at, minute)
        await self._pass(scope, receive, send, identity)

    def _forwarded_by(self, scope: Scope) -> str | None:
        """The node that forwarded this request, when it carries the node secret; None otherwise (a
        missing or wrong secret, or a box that is no node, leaves the request like any other)."""
        headers = Headers(scope=scope)
        presented = headers.get(NODE_HEADER)
        if presented is None or not secret_matches(self.services.settings, presented):
            return None
        return headers.get(VIA_HEADER, "").strip()[:64] or "node"

    async def _pass_forwarded(
        self, scope: Scope, receive: Receive, send: Send, access: Access, path: str, via: str
    ) -> None:
        """A model request another node forwarded: its caller's key was checked and will be counted
        there, so it runs here without one, and is not forwarded again (``FORWARDED_BY``)."""
        if await self._refused_not_json(scope, receive, send, access, path):
            return
        token = FORWARDED_BY.set(via)
        try:
            await self._pass(scope, receive, send, None)
        finally:
            FORWARDED_BY.reset(token)

    def _refund_if_refused(self, send: Send, key_id: str, at: float, minute: int | None = None) -> Send:
        """``send`` that gives the request back to the key's per-minute budget when the app refuses it
        (a model hidden from the key answers 404, not 403, so only the app knows); ``minute`` is its
        place in the shared counter, if it took one."""
        rates = self.services.auth.keys.rates
        shared = self.services.cluster.rates

        async def watched(message: Message) -> None:
            if message["type"] == "http.response.start" and message.get("status") in _REFUNDED:
                rates.refund(key_id, at)
                if minute is not None:
                    await shared.refund(key_id, minute)
            await send(message)

        return watched

    async def _pass(self, scope: Scope, receive: Receive, send: Send, identity: Identity | None) -> None:
        scope.setdefault("state", {})["identity"] = identity
        token = CURRENT_IDENTITY.set(identity)
        try:
            await self.app(scope, receive, send)
        finally:
            CURRENT_IDENTITY.reset(token)

    # ---- cross-site requests ---------------------------------------------------------------------
    async def _refused_not_json(
        self, scope: Scope, receive: Receive, send: Send, access: Access, path: str
    ) -> bool:
        refused = self._not_json(scope, access, path)
        if refused is not None:
            await self._deny(scope, receive, send, access, path, 415, refused)
        return refused is not None

    def _not_json(self, scope: Scope, access: Access, path: str) -> str | None:
        """Why a model endpoint's POST is refused for its content type, or None. Browsers send
        ``text/plain``, form and multipart bodies to any site without asking first; JSON needs the
        site's consent (a CORS preflight), and every model client sends JSON anyway."""
        if scope["type"] != "http" or access not in MODEL_SURFACE or scope.get("method") != "POST":
            return None
        if path.startswith("/api/blobs/"):  # Ollama's blob upload: raw bytes by design
            return None
        headers = Headers(scope=scope)
        if not _has_body(headers) or is_json_media(headers.get("content-type")):
            return None
        sent = headers.get("content-type") or "none"
        return (
            f"the request body must be JSON: send 'Content-Type: application/json' (got '{sent}'; "
            "with curl, add -H 'Content-Type: application/json')"
        )

    def _cookie_change_refused(self, scope: Scope) -> tuple[int, str]:
        """(status, why) when a change authenticated by the session cookie may have come from another
        site, else (0, ""). The browser's Origin must be this very host (Sec-Fetch-Site agreeing),
        and a body must be JSON, which no other site can send without a preflight."""
        if scope.get("method") in _SAFE_METHODS:
            return 0, ""
        headers = Headers(scope=scope)
        fetch_site = headers.get("sec-fetch-site", "").strip().lower()
        if fetch_site and fetch_site not in ("same-origin", "none"):
            return 403, f"refused a {fetch_site} request that carried the session cookie"
        origin = headers.get("origin")
        if origin is None:
            if fetch_site != "same-origin":
                return 403, (
                    "a change with the session cookie needs the browser's Origin header; "
                    "scripts should use an API key ('Authorization: Bearer <key>')"
                )
        elif not self._same_origin(scope, headers, origin):
            return (
                403,
                f"refused a request from another origin ({origin[:100]}) that carried the session cookie",
            )
        if _has_body(headers) and not is_json_media(headers.get("content-type")):
            sent = headers.get("content-type") or "none"
            return 415, f"the request body must be JSON: send 'Content-Type: application/json' (got '{sent}')"
        return 0, ""

    def _same_origin(self, scope: Scope, headers: Headers, origin: str) -> bool:
        parts = urlsplit(origin.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc:
            return False  # "null" (sandboxed frames, file:// pages) and anything odd
        hosts = {headers.get("host", "")}
        client = scope.get("client")
        proxies = self.services.auth.trusted_proxies
        if client and proxies and trusted_peer(client[0], proxies):
            hosts.add(headers.get("x-forwarded-host", "").split(",")[0])
        want = _netloc(parts.netloc, parts.scheme)
        # The scheme is not compared: behind a TLS-terminating proxy the browser says https while
        # the request arrives over http.
        return any(h and want in (_netloc(h, "http"), _netloc(h, "https")) for h in hosts)

    def _changes(self, scope: Scope, access: Access, path: str) -> bool:
        """Whether a viewer's request would change something: any non-read request to the REST API,
        and the model endpoints that manage models rather than use them."""
        if scope.get("method") in _SAFE_METHODS or path in _VIEWER_MAY:
            return False
        return access is Access.MANAGE or path in _MODEL_MANAGEMENT or path.startswith("/api/blobs/")

    def _hint(self, access: Access) -> str:
        if access is Access.MODEL_ADMIN:
            return "this endpoint changes the models on the box: send an admin API key or sign in"
        if access is Access.MODEL:
            return "an API key is required: send 'Authorization: Bearer <key>' or 'x-api-key: <key>'"
        if self.services.auth.needs_setup():
            return "no account yet: create the admin at /setup (or POST /api/auth/setup), or use an API key"
        return "sign in, or send an API key as 'Authorization: Bearer <key>'"

    # ---- model allow-lists -----------------------------------------------------------------------
    async def _check_models(
        self, scope: Scope, receive: Receive, path: str, identity: Identity
    ) -> tuple[Receive, str | None]:
        """The models the request names, checked against the key's list; the body is read here and
        replayed to the app. Returns the receive to use and the first refused model name, if any."""
        named: list[tuple[str, tuple[str, ...]]] = []  # (name, other names of the same model)
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        named += [(m, ()) for m in query.get("model", []) if m.strip()]
        if self.surface == "instance":
            # The port serves its one model whatever the body names: that model is what is checked.
            m = self._instance(scope)
            if m is not None:
                named.append((m.record.model_name, (m.record.model_path,)))
        elif path.startswith("/upstream/"):
            named.append((await self._upstream_model(path[len("/upstream/") :]), ()))
        if scope.get("method") in _WITH_BODY and self.surface != "instance":
            # Read and parsed once, the way the handler will see it; a body that cannot be read or
            # parsed is refused by the body guard before any handler runs.
            receive = await ensure_body(scope, receive, self.surface)
            try:
                obj = parsed_body(scope, self.surface)
            except BodyError:
                return receive, None
            named += [(m, ()) for m in model_names(obj, ollama=path.startswith("/api/"))]
        for name, aliases in named:
            if not self._allowed(identity.allowed_models, name, aliases):
                return receive, name
        return receive, None

    def _allowed(self, patterns: Iterable[str], name: str, aliases: tuple[str, ...]) -> bool:
        names = {name.strip(), name.strip().removesuffix(":latest"), *aliases}
        entry = self.services.router.resolve(name.strip())
        if entry is not None:
            names |= {entry.name, entry.rel_path, entry.rel_path.removesuffix(".gguf")}
        return names_allowed(patterns, names)

    async def _upstream_model(self, target: str) -> str:
        """The model ``/upstream/{target}`` goes to, found the way the proxy finds it (longest prefix)."""
        parts = target.split("/")
        for attempt in range(2):
            for n in range(len(parts), 0, -1):
                name = "/".join(parts[:n])
                if name and self.services.router.resolve(name) is not None:
                    return name
            if attempt == 0:
                await self.services.library.ascan()  # the proxy rescans too before it gives up
        return parts[0]

    def _instance(self, scope: Scope) -> Any:
        instance_id = self.instance_id
        if instance_id is None:
            state = getattr(scope.get("app"), "state", None)
            instance_id = getattr(state, "instance_id", None)
        return self.services.supervisor.instances.get(instance_id) if instance_id else None

    # ---- refusals --------------------------------------------------------------------------------
    async def _deny(
        self, scope: Scope, receive: Receive, send: Send, access: Access, path: str, status: int,
        message: str, headers: dict[str, str] | None = None,
    ) -> None:  # fmt: skip
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": message[:120]})
            return
        response = self._refusal(scope, access, path, status, message, dict(headers or {}))
        await response(scope, receive, send)

    def _refusal(
        self, scope: Scope, access: Access, path: str, status: int, message: str, headers: dict[str, str]
    ) -> Response:
        if status == 401 and self._wants_page(scope, access, path):
            root = scope.get("root_path") or ""
            if self.services.auth.needs_setup():
                return RedirectResponse(f"{root}/setup", status_code=303)
            query = scope.get("query_string", b"").decode("latin-1")
            target = path + (f"?{query}" if query else "")
            return RedirectResponse(f"{root}/login?next={quote(target, safe='')}", status_code=303)
        if status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="LlamaMan"'
        return JSONResponse(dialect_body(access, path, status, message), status, headers)

    def _wants_page(self, scope: Scope, access: Access, path: str) -> bool:
        """A browser asking for a UI page: send it to sign in rather than show a JSON 401."""
        if self.surface != "main" or access is not Access.MANAGE or path.startswith("/api/"):
            return False
        accept = Headers(scope=scope).get("accept", "")
        return scope.get("method") in ("GET", "HEAD") and "text/html" in accept


def _scope_refusal(identity: Identity, access: Access) -> str:
    if identity.restricted:
        return "this API key is limited to some models and cannot manage LlamaMan"
    if access is Access.MODEL_ADMIN:
        return (
            "deleting, copying, pulling or creating models needs an admin API key or a signed-in user; "
            "this is an inference key"
        )
    return (
        "this is an inference API key: it reaches the model endpoints only; "
        "managing LlamaMan needs an admin API key or a signed-in user"
    )


def _has_body(headers: Headers) -> bool:
    length = headers.get("content-length")
    if length is not None:
        return length.strip() != "0"
    return "transfer-encoding" in headers


def is_json_media(content_type: str | None) -> bool:
    """``application/json`` or ``application/<something>+json``, with or without parameters."""
    media = (content_type or "").split(";")[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def _netloc(netloc: str, scheme: str) -> str:
    """``host[:port]`` lowercased, without the scheme's default port."""
    netloc = netloc.strip().lower()
    default = {"http": ":80", "https": ":443"}[scheme]
    return netloc.removesuffix(default)
