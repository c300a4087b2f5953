"""Ollama requests for a model this node does not serve best.

Another node speaks Ollama itself: the request goes there as sent. A peer speaks OpenAI only: a chat
is translated here as for a local llama-server (Ollama's body to ``/v1/chat/completions``, the answer
back to NDJSON or one object), so the official clients and Open WebUI reach peer models too.
"""

from __future__ import annotations

import json
import time
from typing import Any

from fastapi import Request
from starlette.responses import JSONResponse, Response

from llamaman.cluster.forward import RemoteLease
from llamaman.cluster.routing import Kind
from llamaman.core.exchange import Exchange
from llamaman.gateway.dialects import route_path
from llamaman.proxy.common import ProxyError, remote_lease, services_of
from llamaman.proxy.ndjson_stream import NdjsonTranslator, relay_ndjson
from llamaman.proxy.translate import ollama_chat_to_openai
from llamaman.proxy.translate_stream import OllamaChatStream, openai_chat_response_to_ollama
from llamaman.services import Services
from llamaman.upstream.client import UpstreamError
from llamaman.upstream.relay import RelayStream, client_fault_status, raw_forward_headers, stream_headers

_JSON = [(b"content-type", b"application/json")]


async def answer(request: Request, model: str, raw: bytes, body: dict[str, Any]) -> Response | None:
    """The answer from elsewhere, or None to serve ``model`` here."""
    services = services_of(request)
    path = route_path(request.scope)
    remote = remote_lease(services, model, peers=path == "/api/chat")
    if remote is None:
        return None
    if remote.target.kind is Kind.PEER:
        return await _peer_chat(request, services, remote, model, body)
    return await services.relay.forward(
        remote, "POST", path, content=raw, headers=raw_forward_headers(request.scope), style="ollama",
        exchange=Exchange(model, path), receive=request.receive,
    )  # fmt: skip


def _message(raw: bytes, status: int) -> str:
    try:
        error = json.loads(raw).get("error")
    except (ValueError, AttributeError):
        error = None
    if isinstance(error, dict):
        error = error.get("message")
    return str(error) if error else f"the peer answered {status}"


async def _peer_chat(
    request: Request, services: Services, remote: RemoteLease, model: str, body: dict[str, Any]
) -> Response:
    started = time.monotonic_ns()
    payload = ollama_chat_to_openai(body)
    stream = bool(payload["stream"])
    ex = Exchange(model, "/api/chat", stream=stream)
    relay = services.relay
    relay.inflight.running(ex)
    content = json.dumps(payload).encode()
    try:
        upstream = await relay.connect(
            remote,
            "POST",
            "/v1/chat/completions",
            _JSON,
            content,
            None,
            ex,
            None if stream else request.receive,
        )
    except UpstreamError as exc:
        remote.release()
        ex.status, ex.error = 502, f"no peer reachable for '{model}': {exc}"
        relay.record(ex)
        raise ProxyError(502, ex.error) from None
    ex.node, ex.status = remote.node, upstream.status_code
    if upstream.status_code >= 400 or not stream:
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
        return JSONResponse(
            openai_chat_response_to_ollama(
                reply, model, generate=False, load_duration_ns=0, started_ns=started
            )
        )
    ex.on_abort(upstream.abort)
    state = OllamaChatStream(model, generate=False, load_duration_ns=0, started_ns=started)
    lines = relay_ndjson(relay, remote, upstream, NdjsonTranslator(state), ex)
    return RelayStream(lines, remote, upstream, raw_headers=stream_headers(b"application/x-ndjson"))
