"""Ollama requests for a model this node does not serve best.

Another node speaks Ollama itself: the request goes there as sent. A peer speaks OpenAI only: a chat
or a templated generate is translated here as for a local llama-server (Ollama's body to
``/v1/chat/completions``, the answer back to NDJSON or one object), an embedding to ``/v1/embeddings``,
so the official clients and Open WebUI reach peer models too.
"""

from __future__ import annotations

import json
import time
from typing import Any

from fastapi import Request
from starlette.responses import JSONResponse, Response

from llamaman.cluster.forward import OtherKindNext, RemoteLease
from llamaman.cluster.routing import Kind
from llamaman.core.exchange import Exchange
from llamaman.gateway.dialects import route_path
from llamaman.proxy.common import ProxyError, lease_over, remote_lease, services_of
from llamaman.proxy.ndjson_stream import NdjsonTranslator, relay_ndjson
from llamaman.proxy.translate import (
    OllamaChatStream,
    is_load_only,
    ollama_chat_to_openai,
    ollama_embed_to_openai,
    ollama_embeddings_to_openai,
    ollama_generate_to_openai,
    openai_chat_response_to_ollama,
    openai_embeddings_to_ollama_embed,
    openai_embeddings_to_ollama_embeddings,
    parse_keep_alive,
)
from llamaman.proxy.translate_stream import ollama_load_reply
from llamaman.services import Services
from llamaman.upstream.relay import (
    Relay,
    RelayStream,
    client_fault_status,
    raw_forward_headers,
    stream_headers,
)
from llamaman.upstream.wire import UpstreamError, UpstreamResponse

_JSON = [(b"content-type", b"application/json")]
_EMBEDDINGS = ("/api/embed", "/api/embeddings")


def peer_can_serve(path: str, body: dict[str, Any]) -> bool:
    """Whether an OpenAI-compatible peer can answer this Ollama request. A raw prompt and a
    fill-in-the-middle go to llama-server's native routes, which such a peer need not have."""
    if path == "/api/generate":
        return not body.get("raw") and not body.get("suffix")
    return path == "/api/chat" or path in _EMBEDDINGS


async def answer(request: Request, model: str, raw: bytes, body: dict[str, Any]) -> Response | None:
    """The answer from elsewhere, or None to serve ``model`` here."""
    services = services_of(request)
    path = route_path(request.scope)
    # The body goes to other nodes as it came, so it may fail over only to another node: this node
    # and peers need it translated, which their own paths below do.
    remote = remote_lease(services, model, peers=peer_can_serve(path, body), one_kind=True)
    while remote is not None:
        if remote.target.kind is Kind.PEER:
            return await _peer(request, services, remote, model, path, body)
        ex = Exchange(model, path)
        try:
            return await services.relay.forward(
                remote, "POST", path, content=raw, headers=raw_forward_headers(request.scope),
                style="ollama", exchange=ex, receive=request.receive,
            )  # fmt: skip
        except OtherKindNext as nxt:
            services.relay.inflight.forget(ex)
            if nxt.rest[0].kind is Kind.SELF:
                return None  # served here, as if no other node had been tried
            remote = lease_over(services, model, nxt.rest, one_kind=True)
    return None


def _message(raw: bytes, status: int) -> str:
    try:
        error = json.loads(raw).get("error")
    except (ValueError, AttributeError):
        error = None
    if isinstance(error, dict):
        error = error.get("message")
    return str(error) if error else f"the peer answered {status}"


async def _peer(
    request: Request, services: Services, remote: RemoteLease, model: str, path: str, body: dict[str, Any]
) -> Response:
    """An Ollama chat, generate or embedding from a peer, translated both ways as for a local server."""
    generate = path == "/api/generate"
    try:
        if is_load_only(body):
            # Nothing to load: the peer keeps its models loaded as it sees fit.
            if path in _EMBEDDINGS:
                return JSONResponse(
                    {"embedding": []} if path == "/api/embeddings" else {"model": model, "embeddings": []}
                )
            keep_alive = parse_keep_alive(body.get("keep_alive"))
            reason = "unload" if keep_alive is not None and keep_alive <= 0 else "load"
            return JSONResponse(ollama_load_reply(model, reason, generate=generate))
        if path == "/api/embeddings":
            upstream_path, payload = "/v1/embeddings", ollama_embeddings_to_openai(body)
        elif path == "/api/embed":
            upstream_path, payload = "/v1/embeddings", ollama_embed_to_openai(body)
        elif generate:
            upstream_path, payload = ollama_generate_to_openai(body)
        else:
            upstream_path, payload = "/v1/chat/completions", ollama_chat_to_openai(body)
    except BaseException:
        remote.release()
        raise
    started = time.monotonic_ns()
    stream = bool(payload.get("stream"))
    ex = Exchange(model, path, stream=stream)
    relay = services.relay
    relay.inflight.running(ex)
    content = json.dumps(payload).encode()
    receive = None if stream else request.receive
    try:
        upstream = await relay.connect(remote, "POST", upstream_path, _JSON, content, None, ex, receive)
    except UpstreamError as exc:
        remote.release()
        ex.status, ex.error = 502, f"no peer reachable for '{model}': {exc}"
        relay.record(ex)
        raise ProxyError(502, ex.error) from None
    ex.node, ex.status = remote.node, upstream.status_code
    if upstream.status_code < 400 and stream:
        ex.on_abort(upstream.abort)
        state = OllamaChatStream(model, generate=generate, load_duration_ns=0, started_ns=started)
        lines = relay_ndjson(relay, remote, upstream, NdjsonTranslator(state), ex)
        return RelayStream(lines, remote, upstream, raw_headers=stream_headers(b"application/x-ndjson"))
    reply = await _whole_reply(relay, remote, upstream, model, ex)
    if path == "/api/embeddings":
        return JSONResponse(openai_embeddings_to_ollama_embeddings(reply))
    if path == "/api/embed":
        dimensions = body.get("dimensions")
        return JSONResponse(
            openai_embeddings_to_ollama_embed(reply, model, dimensions=dimensions, started_ns=started)
        )
    return JSONResponse(
        openai_chat_response_to_ollama(
            reply, model, generate=generate, load_duration_ns=0, started_ns=started
        )
    )


async def _whole_reply(
    relay: Relay, remote: RemoteLease, upstream: UpstreamResponse, model: str, ex: Exchange
) -> dict[str, Any]:
    """A peer's whole JSON answer, recorded; its refusal or an unreadable reply as a ProxyError."""
    try:
        raw = await upstream.aread()
    except UpstreamError as exc:
        raw, ex.status = str(exc).encode(), 502
    finally:
        upstream.close()
        remote.release()
    ex.first_byte = time.monotonic()
    if ex.status >= 400:
        ex.error = _message(raw, ex.status)
        relay.record(ex)
        raise ProxyError(client_fault_status(ex.status, raw), ex.error)
    try:
        reply = json.loads(raw)
    except ValueError:
        reply = None
    if not isinstance(reply, dict):
        ex.status, ex.error = 502, f"the peer for '{model}' sent an unreadable reply"
        relay.record(ex)
        raise ProxyError(502, ex.error)
    ex.absorb_usage(reply)
    relay.record(ex)
    return reply
