"""What every proxy surface shares: reading bodies, getting a lease, answering errors in the
client's own dialect (OpenAI, Ollama, Anthropic)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from fastapi import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive

from llamaman.cluster.forward import RemoteLease
from llamaman.cluster.routing import Here, Kind, Target
from llamaman.core.errors import LlamaManError
from llamaman.core.exchange import FORWARDED_BY, REQUEST_ID, Exchange
from llamaman.gateway.bodies import BodyError, cached_body, parsed_body, remember_body
from llamaman.gateway.dialects import model_status, retry_headers
from llamaman.scheduling.gate import QueueFull
from llamaman.scheduling.router import Lease, ModelNotFound, ModelUnavailable
from llamaman.services import Services
from llamaman.upstream.inflight import RequestCancelled, abortable
from llamaman.upstream.relay import ErrorStyle, error_payload, exc_status

T = TypeVar("T")


class ProxyError(Exception):
    """An answer to give instead of proxying; ``response()`` renders it in the client's dialect."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}

    @classmethod
    def of(cls, exc: LlamaManError, message: str | None = None) -> ProxyError:
        """A domain error as the model endpoints answer it (``MODEL_STATUS``), optionally reworded."""
        return cls(model_status(exc), exc.message if message is None else message, retry_headers(exc))

    def response(self, style: ErrorStyle) -> Response:
        body = error_payload(style, self.message, self.status)
        if style == "openai" and self.status == 404:
            body["error"]["type"] = "invalid_request_error"
            body["error"]["code"] = "model_not_found"
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def render_proxy_error(exc: ProxyError, style: ErrorStyle) -> Response:
    """``exc`` as the model endpoints answer it in ``style``."""
    if style == "openai" and 400 <= exc.status < 500 and exc.status != 404:
        # A client mistake, typed the way OpenAI and llama-server type them (not "server_error").
        body = error_payload(style, exc.message, exc.status)
        body["error"]["type"] = "rate_limit_exceeded" if exc.status == 429 else "invalid_request_error"
        return JSONResponse(body, status_code=exc.status, headers=exc.headers)
    return exc.response(style)


def services_of(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


async def read_json(request: Request) -> tuple[dict[str, Any], bytes]:
    """The parsed body and its raw bytes (kept so unchanged bodies pass through without re-encoding).

    The body guard in front of every surface has read and strictly parsed it already (the object
    the model check saw is the one returned here); an app served without the guard parses here.
    """
    scope = request.scope
    raw = cached_body(scope)
    if raw is None:
        raw = await request.body()
        remember_body(scope, raw)
    try:
        body = parsed_body(scope, "proxy")
    except BodyError as exc:
        raise ProxyError(exc.status, exc.message) from None
    if body is None:
        if raw.strip():
            raise ProxyError(400, "request body must be a JSON object")
        return {}, raw
    if not isinstance(body, dict):
        raise ProxyError(400, "request body must be a JSON object")
    return body, raw


def require_model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise ProxyError(400, "the request needs a 'model' field naming the model to use")
    return model.strip()


async def lease_for(services: Services, model: str, *, min_ctx: int | None = None) -> Lease:
    """A lease on an instance serving ``model``; router failures become ProxyErrors.

    While it waits the request is listed as queued, and an administrator may cancel it there; the
    record made once it runs takes the same id (``REQUEST_ID``). A place free at once is taken at
    once: no queue entry, no task to watch it."""
    lease = services.router.lease_now(model, min_ctx=min_ctx)
    if lease is not None:
        return lease
    ticket = Exchange(model, "queued")
    REQUEST_ID.set(ticket.id)
    services.relay.inflight.queued(ticket)
    try:
        return await abortable(ticket, services.router.acquire(model, min_ctx=min_ctx))
    except RequestCancelled as exc:
        raise ProxyError.of(exc) from None
    except ModelNotFound as exc:
        raise ProxyError.of(exc, f"model '{model}' not found") from None
    except (QueueFull, ModelUnavailable) as exc:
        raise ProxyError.of(exc) from None
    except TimeoutError:
        raise ProxyError(504, f"model '{model}' was not ready within REQUEST_TIMEOUT") from None
    finally:
        services.relay.inflight.forget(ticket)


def here(services: Services, model: str) -> Here:
    """What this node can do for ``model`` now: file on disk, resident, requests in flight, free memory."""
    router = services.router
    entry = router.resolve(model)
    resident = entry is not None and router.status(entry) == "loaded"
    inflight, room, capacity = 0, True, 0
    if entry is not None:
        mine = [m for m in services.supervisor.list() if m.record.model_path == entry.rel_path]
        inflight = sum(s.inflight for m in mine if (s := router.slots.get(m.id)) is not None)
        caps = [m.settings.max_concurrent for m in mine]
        # Every copy capped and every slot taken (requests queued count as taken): full here.
        capacity = 0 if not caps or 0 in caps else sum(caps)
        room = capacity == 0 or inflight < capacity
    free = 0
    if entry is not None and not (resident and room):
        # Only a place that would load the model is ranked by free memory.
        router.refresh_devices()
        free = sum(d.free for d in router.devices.devices.values())
    name = services.nodes.name or "local"
    return Here(
        name,
        on_disk=entry is not None,
        resident=resident,
        room=room,
        inflight=inflight,
        free_memory=free,
        capacity=capacity,
    )


def remote_lease(
    services: Services,
    model: str,
    *,
    min_ctx: int | None = None,
    peers: bool = True,
    local_body: Callable[[Any], bytes] | None = None,
    one_kind: bool = False,
) -> RemoteLease | None:
    """A lease elsewhere when another node or a peer is the better place for ``model``; None when this
    node serves it (or nothing else knows it: the local answer, a 404 included, is the right one).
    ``local_body`` and ``one_kind``: see ``RemoteLease``.

    A request another node forwarded here is never forwarded again."""
    cluster = services.cluster
    if FORWARDED_BY.get() is not None or not (cluster.clustered or services.peers.configured):
        return None
    targets = cluster.targets(model, here(services, model), services.aliases.aliases)
    if not peers:
        targets = [t for t in targets if t.kind is not Kind.PEER]
    if not targets or targets[0].kind is Kind.SELF:
        return None
    return lease_over(services, model, targets, min_ctx=min_ctx, local_body=local_body, one_kind=one_kind)


def lease_over(
    services: Services,
    model: str,
    targets: list[Target],
    *,
    min_ctx: int | None = None,
    local_body: Callable[[Any], bytes] | None = None,
    one_kind: bool = False,
) -> RemoteLease:
    """A lease on ``targets`` in order, falling back to this node's own instance where one is listed."""
    return RemoteLease(
        services.cluster, model, targets, lambda: services.router.acquire(model, min_ctx=min_ctx),
        local_body=local_body, one_kind=one_kind,
    )  # fmt: skip


async def until_aborted(ex: Exchange, work: Awaitable[T], receive: Receive | None) -> T:
    """``work`` unless the request is cancelled or its client leaves first (see ``abortable``)."""
    try:
        return await abortable(ex, work, receive)
    except RequestCancelled as exc:
        raise ProxyError(exc_status(exc), exc.message) from None


def apply_sampling(body: dict[str, Any], lease: Lease) -> bool:
    """Force the instance's sampling overrides onto an OpenAI-style body; True if anything changed."""
    forced = lease.instance.settings.sampling.active()
    changed = False
    for key, value in forced.items():
        if body.get(key) != value:
            body[key] = value
            changed = True
    return changed
