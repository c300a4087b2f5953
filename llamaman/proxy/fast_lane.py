"""The fast lane of the proxy port (and the main port): the plainest model requests, answered without
the ASGI stack.

Most requests a proxy sees are the same: a JSON POST to ``/v1/chat/completions`` with a valid key
that may use every model, for a model that is loaded and has a free place. For those, the ASGI
server's request cycle, the middleware layers and the router add about half of LlamaMan's cost per
request on a small CPU, and decide nothing. The lane takes such a request straight from the
connection (``fast_protocol``) to ``Relay.forward``, the very code the handler would call.

It decides nothing of its own either. Each step asks the code the ASGI path asks (the key store,
the strict JSON parser, the body's model check, the router's lease), and anything outside the plain
case goes the ASGI way, where every check and refusal lives:

- headers: POST to one of ``FAST_PATHS`` without a query; HTTP/1.1; one JSON ``Content-Type``;
  one ``Content-Length`` of at most ``BODY_LIMIT``; no ``Transfer-Encoding``, ``Expect`` or
  ``Upgrade``; no ``Connection`` but ``keep-alive`` (what HTTP clients such as httpx send) or
  ``close`` (a client opening a connection per request); no node or loading-progress header; at
  most one ``Authorization`` (Bearer) and no ``X-Api-Key``;
- the caller: a key that passes the key store's check and has no model list, no rate limit and no
  daily quota, or no key at all where keys are not required;
- the body: parsed by ``parse_json`` and checked by ``check_model_fields`` without an error, a JSON
  object naming a model, without the loading-progress field;
- the box: not part of a cluster and without peers (``LLAMAMAN_PROXY_FAST_LANE=0`` turns the lane off);
- on the main port (``FastLane(..., main_port=True)``), where the UI's session cookie counts: no
  ``Cookie`` header, so a request a signed-in browser sends is checked as the full path checks it;
- the model: ``Router.lease_now`` gives a lease at once (loaded, healthy, a free place, nobody
  queued), or its instance is healthy and only its gate is full: then the lane waits in the queue
  with ``lease_for``, the full path's own wait, and answers and records what the queue refuses as
  the full path does.

A refusal by the middleware, a model to load, a body the parser rejects: all take the ASGI path,
which answers them exactly as before, in the endpoint's dialect.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.datastructures import Headers
from starlette.responses import Response

from llamaman.cluster.forward import NODE_HEADER, VIA_HEADER
from llamaman.core.exchange import Exchange, new_request_id
from llamaman.core.identity import Identity
from llamaman.gateway.bodies import MODEL_FIELDS, BodyError, check_model_fields, model_names, parse_json
from llamaman.gateway.middleware import is_json_media
from llamaman.gateway.refusals import record_refusal
from llamaman.proxy.common import ProxyError, lease_for, render_proxy_error
from llamaman.proxy.openai import PROGRESS_FIELD, PROGRESS_HEADER, encode_body
from llamaman.scheduling.lease import Lease
from llamaman.upstream.client import Pending, encode_headers
from llamaman.upstream.relay import forward_header_allowed

if TYPE_CHECKING:
    from llamaman.auth.apikeys import KeyRecord
    from llamaman.services import Services

# Request target -> (path upstream, whether the instance's forced sampling values apply). Each is a
# model endpoint in the access table (a test holds that), so a key's scope never has to be asked.
FAST_PATHS: dict[bytes, tuple[str, bool]] = {
    b"/v1/chat/completions": ("/v1/chat/completions", True),
    b"/v1/completions": ("/v1/completions", True),
    b"/v1/embeddings": ("/v1/embeddings", False),
}
# The Connection values a plain request may carry: anything else names headers or asks an upgrade.
_CONNECTION = frozenset({b"keep-alive", b"close"})
# Larger bodies (images, long documents) are rare, and their relay cost is not the request's.
BODY_LIMIT = 256 * 1024

_ONCE = frozenset({b"content-type", b"content-length", b"authorization", b"connection"})
_NEVER = frozenset(
    {
        b"transfer-encoding", b"expect", b"upgrade", b"x-api-key",
        NODE_HEADER.encode(), VIA_HEADER.encode(), PROGRESS_HEADER.encode(),
    }
)  # fmt: skip


@dataclass(slots=True)
class Admitted:
    """A request whose headers qualify; its body is still to come. The rest is what the next request
    on the same connection, with the same target and headers but its length, may take over
    (``FastLane.admit``'s ``last``)."""

    path: str
    sampling: bool
    identity: Identity | None
    length: int
    forward: list[tuple[bytes, bytes]]
    forward_raw: bytes  # ``forward`` as written upstream, made once per connection's headers
    target: bytes = b""
    headers: list[tuple[bytes, bytes]] | None = None
    length_at: int = -1  # where Content-Length is in ``headers``
    record: KeyRecord | None = None  # the key's record as it was checked


@dataclass(slots=True)
class Ready:
    """A whole request the lane can serve once it has a place."""

    admitted: Admitted
    body: dict[str, Any]
    raw: bytes
    model: str


@dataclass(slots=True)
class Sent:
    """A request's body for llama-server, and the request itself when it is already written
    (``FastLane.send_now``)."""

    content: bytes
    pending: Pending | None


class FastLane:
    """Decides whether a request may skip the ASGI stack, and serves those that may."""

    def __init__(self, services: Services, *, main_port: bool = False) -> None:
        self.services = services
        # The main port takes the session cookie as a credential (the proxy and instance ports
        # ignore it): a request that carries one goes the full way, where the cookie's user, its
        # origin checks and its viewer rights are decided.
        self._never = _NEVER | {b"cookie"} if main_port else _NEVER

    # ---- decisions ---------------------------------------------------------------------------------
    def admit(
        self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], last: Admitted | None = None
    ) -> Admitted | None:
        """The request, if its method, target and headers (names lower-case) qualify; else None.
        ``last``: the request admitted before on the same connection (see ``_again``)."""
        if method != b"POST":
            return None
        if last is not None:
            again = self._again(last, target, headers)
            if again is not None:
                return again
        route = FAST_PATHS.get(target)
        if route is None or self._spread():
            return None
        seen: set[bytes] = set()
        length = at = -1
        json_type = False
        never = self._never
        for i, (name, value) in enumerate(headers):
            if name in never:
                return None
            if name in _ONCE:
                if name in seen:
                    return None
                seen.add(name)
                if name == b"content-length":
                    if not value.isdigit():
                        return None
                    length, at = int(value), i
                elif name == b"content-type":
                    json_type = is_json_media(value.decode("latin-1"))
                elif name == b"connection" and value.strip().lower() not in _CONNECTION:
                    return None  # a Connection header naming other headers, or an upgrade
        if not json_type or not 0 < length <= BODY_LIMIT:
            return None
        path, sampling = route
        auth = self.services.auth
        credential = auth.authenticate(Headers(raw=headers), cookie=False)
        identity = credential.identity
        if credential.problem is not None:
            return None
        if identity is None:
            if auth.require_auth:
                return None
        elif (
            identity.kind != "key"
            or identity.restricted
            or identity.daily_token_quota
            or (identity.key_id and identity.rpm_limit)
        ):
            return None
        forward = [(k, v) for k, v in headers if forward_header_allowed(k)]
        record = auth.keys.by_id.get(identity.key_id) if identity is not None and identity.key_id else None
        return Admitted(
            path, sampling, identity, length, forward, encode_headers(forward), target, headers, at, record
        )  # fmt: skip

    def _again(self, last: Admitted, target: bytes, headers: list[tuple[bytes, bytes]]) -> Admitted | None:
        """The last request's admission for this one, when every header but the length is byte for
        byte the same (what an SDK client sends on its connection): the checks of the headers would
        come out the same, so only what may have changed since is asked again: the key (the store
        replaces its record whenever it is changed or revoked, and all records when it loads them),
        its expiry, whether keys are now required, and whether the box joined others. None:
        ``admit`` checks it all."""
        at, before = last.length_at, last.headers
        if (
            target != last.target
            or before is None
            or len(headers) != len(before)
            or headers[at][0] != b"content-length"
            or headers[:at] != before[:at]
            or headers[at + 1 :] != before[at + 1 :]
        ):
            return None
        value = headers[at][1]
        length = int(value) if value.isdigit() else -1
        if not 0 < length <= BODY_LIMIT or self._spread():
            return None
        auth, record = self.services.auth, last.record
        if record is None:
            if last.identity is not None or auth.require_auth:
                return None
        elif auth.keys.by_hash.get(record.key_hash) is not record or (
            record.expires_at is not None and time.time() >= record.expires_at
        ):
            return None
        else:
            auth.keys.touch(record)
        return Admitted(
            last.path, last.sampling, last.identity, length, last.forward, last.forward_raw, target, headers,
            at, record,
        )  # fmt: skip

    def ready(self, admitted: Admitted, raw: bytes) -> Ready | None:
        """The request with its body, if the body qualifies; else None."""
        try:
            body = parse_json(raw)
            if type(body) is not dict:
                return None
            check_model_fields(body, MODEL_FIELDS)
        except BodyError:
            return None
        model = body.get("model")
        if not isinstance(model, str) or not model.strip() or PROGRESS_FIELD in body:
            return None
        return Ready(admitted, body, raw, model.strip())

    def lease(self, ready: Ready) -> Lease | None:
        """A place on the model's instance taken at once, or None (the ASGI path then waits for one)."""
        if self._spread():
            return None
        return self.services.router.lease_now(ready.model)

    def may_wait(self, ready: Ready) -> bool:
        """Whether the request, given no place at once, may wait for one on the lane: its model's
        instance is healthy and only its gate is full, so waiting is all the full path would do."""
        return not self._spread() and self.services.router.waits_at_gate(ready.model)

    async def wait(self, ready: Ready) -> Lease:
        """A place, waited for in the queue exactly as the full path waits (``lease_for``: the
        in-flight list shows it queued, an administrator may cancel it); raises ProxyError."""
        return await lease_for(self.services, ready.model)

    def refusal(self, ready: Ready, exc: ProxyError, started: float) -> Response:
        """The answer to a request the queue turned away, recorded as the full path records it."""
        response = render_proxy_error(exc, "openai")
        ex = Exchange("", ready.admitted.path, started=started, status=exc.status, id=new_request_id())
        names = model_names(ready.body, ollama=False)
        record_refusal(
            self.services, ex, bytes(response.body), names[0] if names else "", ready.admitted.identity
        )
        return response

    def _spread(self) -> bool:
        """Whether another box may be the place to answer (the ASGI path decides where)."""
        services = self.services
        return bool(services.cluster.clustered or services.peers.configured)

    # ---- serving -----------------------------------------------------------------------------------
    def send_now(self, ready: Ready, lease: Lease, keep: Callable[[Pending], object]) -> Sent | None:
        """The body for llama-server, written to it at once from the parser's callback when a kept
        connection is free (``Relay.send_now``): the hop to the task that waits for the answer then
        overlaps llama-server's work instead of coming before it, and so does everything the caller
        sets up after it (the exchange, which then takes over dropping it). ``keep`` is handed the
        written request at once, so that whatever fails after the write can still drop it. None:
        ``answer`` makes the body."""
        a = ready.admitted
        try:
            # Made once: the forced sampling values it applies are in the body after that.
            content = encode_body(ready.body, ready.raw, lease, sampling=a.sampling, changed=False)
        except Exception:
            return None  # ``answer`` meets it again, and answers it
        pending = self.services.relay.send_now(lease, a.path, content, a.forward_raw)
        if pending is not None:
            keep(pending)
        return Sent(content, pending)

    async def answer(self, ready: Ready, lease: Lease, ex: Exchange, sent: Sent | None = None) -> Response:
        """What the handler would answer, through the relay the handler would use. An answer that
        comes whole carries its ``settle``, for the caller to call once it is written."""
        a = ready.admitted
        if sent is not None:
            content, pending = sent.content, sent.pending
        else:
            pending = None
            try:
                content = encode_body(ready.body, ready.raw, lease, sampling=a.sampling, changed=False)
            except BaseException:
                lease.release()
                raise
        return await self.services.relay.forward(
            lease, "POST", a.path, content=content, headers=a.forward, exchange=ex, settle_later=True,
            sent=pending,
        )  # fmt: skip

    def exchange(self, ready: Ready, lease: Lease) -> Exchange:
        return Exchange(lease.model_name, ready.admitted.path, identity=ready.admitted.identity)
