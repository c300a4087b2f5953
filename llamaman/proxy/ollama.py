"""The Ollama API (``/api/*``) served by llama-server instances.

Requests are translated to llama-server's OpenAI-compatible endpoints (native ``/completion`` and
``/infill`` for raw and fill-in-the-middle generation) and the replies back, streaming NDJSON line
by line as llama-server produces tokens. Every request that reaches an instance holds a lease on it
from before the upstream call until a ``finally`` after the last byte, whatever ends the request.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from llamaman.library.catalog import ModelEntry
from llamaman.proxy import common, ollama_elsewhere, ollama_models
from llamaman.proxy import ollama_generate as generate_extra
from llamaman.proxy.common import ProxyError, apply_sampling, lease_for, read_json, require_model, services_of
from llamaman.proxy.ndjson_stream import NdjsonTranslator, relay_ndjson
from llamaman.proxy.openai import listing_identity
from llamaman.proxy.translate import (
    OllamaChatStream,
    TranslateError,
    is_load_only,
    load_options,
    native_completion_to_ollama,
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
from llamaman.scheduling.router import Lease, ModelNotFound
from llamaman.services import Services
from llamaman.upstream.relay import (
    Exchange,
    RelayStream,
    client_fault_status,
    stream_headers,
)
from llamaman.upstream.wire import UpstreamError, UpstreamResponse

log = logging.getLogger(__name__)

# Clients gate features on this version: Open WebUI calls the connection broken without an answer,
# and SDKs only send `think`, JSON-schema `format` or `dimensions` to servers new enough to know
# them. It names a release whose request and reply shapes this module follows.
OLLAMA_VERSION = "0.13.0"

router = APIRouter(tags=["ollama"])
root_router = APIRouter(tags=["ollama"])

_JSON = {"Content-Type": "application/json"}
_NDJSON = "application/x-ndjson"
_CHAT_PATH = "/v1/chat/completions"

Handler = Callable[[Request], Awaitable[Response]]


def _ollama_errors(handler: Handler) -> Handler:
    """Answer refusals as Ollama does: ``{"error": "..."}`` with a fitting status."""

    @functools.wraps(handler)
    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except ProxyError as exc:
            return exc.response("ollama")
        except TranslateError as exc:
            return ProxyError(400, str(exc)).response("ollama")

    return wrapped


def _line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode() + b"\n"


def _model_field(body: dict[str, Any]) -> str:
    # Older clients name the model in "name".
    if "model" not in body and isinstance(body.get("name"), str):
        return require_model({"model": body["name"]})
    return require_model(body)


# llama.cpp keeps a context size in 32 bits.
_MAX_CTX = 2**31 - 1


def _min_ctx(body: dict[str, Any], entry: ModelEntry) -> int | None:
    """The context a request needs, capped like Ollama at what the model was trained for: a client
    asking for more would otherwise relaunch the model with a context it cannot use."""
    num_ctx = load_options(body.get("options")).get("num_ctx")
    if num_ctx is None:
        return None
    if isinstance(num_ctx, bool) or not isinstance(num_ctx, int | float) or num_ctx < 0:
        raise ProxyError(400, f"option 'num_ctx' must be a positive integer, got {num_ctx!r}")
    if num_ctx > _MAX_CTX or num_ctx != int(num_ctx):
        raise ProxyError(400, f"option 'num_ctx' must be a whole number of tokens up to {_MAX_CTX}")
    trained = entry.info.context_length if entry.info is not None else None
    return min(int(num_ctx), trained or int(num_ctx)) or None


def _upstream_message(raw: bytes, status: int) -> str:
    try:
        error = json.loads(raw).get("error")
    except (ValueError, AttributeError):
        error = None
    if isinstance(error, dict):
        error = error.get("message")
    return (
        str(error) if error else (raw.decode(errors="replace").strip() or f"llama-server answered {status}")
    )


async def _open(services: Services, lease: Lease, path: str, payload: dict[str, Any]) -> httpx.Response:
    """The upstream response, body unread; llama-server's refusals become ProxyErrors."""
    try:
        upstream = await services.relay.open(
            lease, "POST", path, content=json.dumps(payload).encode(), headers=_JSON
        )
    except httpx.HTTPError as exc:
        raise ProxyError(502, f"llama-server for '{lease.model_name}' is unreachable: {exc}") from None
    if upstream.status_code >= 400:
        try:
            raw = await upstream.aread()
        except httpx.HTTPError:
            raw = b""
        finally:
            await upstream.aclose()
        status = client_fault_status(upstream.status_code, raw)
        raise ProxyError(status, _upstream_message(raw, upstream.status_code))
    return upstream


async def _open_stream(
    services: Services, lease: Lease, path: str, payload: dict[str, Any]
) -> UpstreamResponse:
    """``_open`` for a streamed answer, over the relay's own client (its bytes are relayed as read)."""
    try:
        upstream = await services.relay.open_raw(lease, path, json.dumps(payload).encode(), _JSON)
    except UpstreamError as exc:
        raise ProxyError(502, f"llama-server for '{lease.model_name}' is unreachable: {exc}") from None
    if upstream.status_code >= 400:
        try:
            raw = await upstream.aread()
        except UpstreamError:
            raw = b""
        finally:
            upstream.close()
        status = client_fault_status(upstream.status_code, raw)
        raise ProxyError(status, _upstream_message(raw, upstream.status_code))
    return upstream


async def _read_json_reply(upstream: httpx.Response, model: str) -> dict[str, Any]:
    try:
        raw = await upstream.aread()
    except httpx.HTTPError as exc:
        raise ProxyError(502, f"llama-server for '{model}' failed mid-reply: {exc}") from None
    finally:
        await upstream.aclose()
    try:
        reply = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        reply = None
    if not isinstance(reply, dict):
        raise ProxyError(502, f"llama-server for '{model}' sent an unreadable reply")
    return reply


# -- root, version, models --------------------------------------------------------------------------


@root_router.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
async def ollama_root() -> PlainTextResponse:
    # Clients probe this to tell an Ollama server apart from anything else on the port.
    return PlainTextResponse("Ollama is running")


@router.get("/api/version")
async def ollama_version() -> dict[str, str]:
    return {"version": OLLAMA_VERSION}


@router.get("/api/tags")
@_ollama_errors
async def ollama_tags(request: Request) -> Response:
    return JSONResponse(await ollama_models.tags(services_of(request), listing_identity(request)))


# HEAD probes answer like GET; kept out of the schema so each operation is documented once.
router.add_api_route("/api/version", ollama_version, methods=["HEAD"], include_in_schema=False)
router.add_api_route("/api/tags", ollama_tags, methods=["HEAD"], include_in_schema=False)


@router.get("/api/ps")
@_ollama_errors
async def ollama_ps(request: Request) -> Response:
    return JSONResponse(ollama_models.ps(services_of(request), listing_identity(request)))


@router.post("/api/show")
@_ollama_errors
async def ollama_show(request: Request) -> Response:
    body, raw = await read_json(request)
    services, model = services_of(request), _model_field(body)
    if services.router.resolve(model) is None:
        forwarded = await ollama_elsewhere.answer(request, model, raw, body)
        if forwarded is not None:
            return forwarded
    return JSONResponse(await ollama_models.show(services, model))


# -- chat and generate ------------------------------------------------------------------------------


async def _load_or_unload(
    services: Services, model: str, keep_alive: float | None, min_ctx: int | None
) -> str:
    """Ollama's empty requests: load the model (or unload it for keep_alive 0); the done_reason."""
    if keep_alive is not None and keep_alive <= 0:
        try:
            await services.router.unload(model)
        except ModelNotFound as exc:
            raise ProxyError.of(exc, f"model '{model}' not found") from None
        return "unload"
    lease = await lease_for(services, model, min_ctx=min_ctx)
    try:
        lease.keep_alive(keep_alive)
    finally:
        lease.release()
    return "load"


async def _generation(request: Request, *, generate: bool) -> Response:
    services = services_of(request)
    body, raw = await read_json(request)
    model = require_model(body)
    forwarded = await ollama_elsewhere.answer(request, model, raw, body)
    if forwarded is not None:
        return forwarded
    keep_alive = parse_keep_alive(body.get("keep_alive"))
    entry = await ollama_models.resolve(services, model)
    min_ctx = _min_ctx(body, entry)
    if "completion" not in entry.capabilities:
        raise ProxyError(400, f'"{model}" does not support {"generate" if generate else "chat"}')
    if is_load_only(body):
        reason = await _load_or_unload(services, model, keep_alive, min_ctx)
        return JSONResponse(ollama_load_reply(model, reason, generate=generate))
    if generate:
        path, payload = ollama_generate_to_openai(body, templated=generate_extra.is_templated(entry))
        generate_extra.check(body)  # refused before a model is loaded for it
    else:
        path, payload = _CHAT_PATH, ollama_chat_to_openai(body)

    started = time.monotonic_ns()
    lease = await lease_for(services, model, min_ctx=min_ctx)
    ex = Exchange(model, "/api/generate" if generate else "/api/chat", stream=bool(payload["stream"]))
    ex.note_load(lease.load_duration_ns)
    prompt = ""
    services.relay.inflight.running(ex)
    receive = None if payload["stream"] else request.receive
    try:
        if generate:
            path, payload, prompt = await generate_extra.prepare(services, lease, body, path, payload)
        apply_sampling(payload, lease)
        lease.keep_alive(keep_alive)
        # A raw generate goes to the native completion route: which translation applies is known only now.
        native = path != _CHAT_PATH
        if payload["stream"]:
            raw_upstream = await common.until_aborted(ex, _open_stream(services, lease, path, payload), None)
            ex.on_abort(raw_upstream.abort)
            ex.status = 200
            state = OllamaChatStream(
                model, generate=generate, load_duration_ns=lease.load_duration_ns, started_ns=started
            )
            ndjson = NdjsonTranslator(state, native=native)
            lines = relay_ndjson(services.relay, lease, raw_upstream, ndjson, ex)
            if generate:
                lines = generate_extra.with_context(services, lease, lines, body, prompt)
            return RelayStream(lines, lease, raw_upstream, raw_headers=stream_headers(_NDJSON.encode()))
        upstream = await common.until_aborted(ex, _open(services, lease, path, payload), receive)
    except BaseException as exc:
        lease.release()
        if isinstance(exc, ProxyError):
            ex.status, ex.error = exc.status, exc.message
            services.relay.record(ex)
        elif isinstance(exc, asyncio.CancelledError):  # the server stopping, its grace over
            services.relay.cut_off(ex)
        raise
    ex.status = 200
    try:
        reply = await common.until_aborted(ex, _read_json_reply(upstream, model), receive)
        context = (
            await generate_extra.reply_context(services, lease, body, reply, prompt) if generate else None
        )
    except ProxyError as exc:
        ex.status, ex.error = exc.status, exc.message
        services.relay.record(ex)
        raise
    except asyncio.CancelledError:  # the server stopping, its grace over
        services.relay.cut_off(ex)
        raise
    finally:
        lease.release()
    ex.first_byte = time.monotonic()
    ex.absorb_usage(reply)
    if native:
        obj = native_completion_to_ollama(
            reply, model, generate=generate, load_duration_ns=lease.load_duration_ns, started_ns=started
        )
    else:
        obj = openai_chat_response_to_ollama(
            reply, model, generate=generate, load_duration_ns=lease.load_duration_ns, started_ns=started
        )
    if generate:
        generate_extra.finish(obj, context, body, reply)
    if "error" in obj:
        ex.status, ex.error = 500, str(obj["error"])
    services.relay.record(ex)
    return JSONResponse(obj, status_code=ex.status)


@router.post("/api/chat")
@_ollama_errors
async def ollama_chat(request: Request) -> Response:
    return await _generation(request, generate=False)


@router.post("/api/generate")
@_ollama_errors
async def ollama_generate(request: Request) -> Response:
    return await _generation(request, generate=True)


# -- embeddings -------------------------------------------------------------------------------------


async def _embedding(request: Request, *, legacy: bool) -> Response:
    services = services_of(request)
    body, raw = await read_json(request)
    model = require_model(body)
    forwarded = await ollama_elsewhere.answer(request, model, raw, body)
    if forwarded is not None:
        return forwarded
    keep_alive = parse_keep_alive(body.get("keep_alive"))
    min_ctx = _min_ctx(body, await ollama_models.resolve(services, model))
    if is_load_only(body):
        await _load_or_unload(services, model, keep_alive, min_ctx)
        return JSONResponse({"embedding": []} if legacy else {"model": model, "embeddings": []})
    payload = ollama_embeddings_to_openai(body) if legacy else ollama_embed_to_openai(body)

    started = time.monotonic_ns()
    lease = await lease_for(services, model, min_ctx=min_ctx)
    ex = Exchange(model, "/api/embeddings" if legacy else "/api/embed")
    ex.note_load(lease.load_duration_ns)
    services.relay.inflight.running(ex)
    try:
        lease.keep_alive(keep_alive)
        opening = _open(services, lease, "/v1/embeddings", payload)
        upstream = await common.until_aborted(ex, opening, request.receive)
        reply = await common.until_aborted(ex, _read_json_reply(upstream, model), request.receive)
    except ProxyError as exc:
        ex.status, ex.error = exc.status, exc.message
        services.relay.record(ex)
        raise
    finally:
        lease.release()
    ex.status, ex.first_byte = 200, time.monotonic()
    ex.absorb_usage(reply)
    services.relay.record(ex)
    if legacy:
        return JSONResponse(openai_embeddings_to_ollama_embeddings(reply))
    return JSONResponse(
        openai_embeddings_to_ollama_embed(
            reply,
            model,
            dimensions=body.get("dimensions"),
            load_duration_ns=lease.load_duration_ns,
            started_ns=started,
        )
    )


@router.post("/api/embed")
@_ollama_errors
async def ollama_embed(request: Request) -> Response:
    return await _embedding(request, legacy=False)


@router.post("/api/embeddings")
@_ollama_errors
async def ollama_embeddings(request: Request) -> Response:
    return await _embedding(request, legacy=True)


# -- copy, delete, and what LlamaMan does not do ----------------------------------------------------


@router.post("/api/copy")
@_ollama_errors
async def ollama_copy(request: Request) -> Response:
    body, _ = await read_json(request)
    await ollama_models.copy(services_of(request), body.get("source"), body.get("destination"))
    return Response(status_code=200)


@router.delete("/api/delete")
@_ollama_errors
async def ollama_delete(request: Request) -> Response:
    body, _ = await read_json(request)
    await ollama_models.delete(services_of(request), _model_field(body))
    return Response(status_code=200)


def _unsupported(what: str) -> Response:
    # A 4xx: the request can't be served here, however often it is sent (LlamaMan never answers 5xx
    # for what the caller asked).
    return ProxyError(400, f"{what} is not supported by LlamaMan").response("ollama")


@router.post("/api/create")
async def ollama_create() -> Response:
    return _unsupported("creating models from a Modelfile (/api/create)")


@router.post("/api/push")
async def ollama_push() -> Response:
    return _unsupported("pushing models to a registry (/api/push)")
