"""The OpenAI-compatible surface (``/v1/*``): llama-server speaks it natively, so requests pass
through untouched apart from the instance's forced sampling values, and answers stream straight back.

The helpers here (``pass_through``, ``model_objects``) are shared with the Anthropic, native and
router-mode surfaces.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import weakref
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import PurePosixPath
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from llamaman.core.identity import Identity, request_identity
from llamaman.core.redact import redact_argv
from llamaman.core.state import InstanceState
from llamaman.library.catalog import ModelEntry, ModelLibrary
from llamaman.proxy.cluster_models import merge_openai
from llamaman.proxy.common import (
    ProxyError,
    apply_sampling,
    lease_for,
    read_json,
    remote_lease,
    require_model,
    services_of,
)
from llamaman.scheduling.router import Lease, ModelNotFound
from llamaman.services import Services
from llamaman.upstream.answers import stream_error_line
from llamaman.upstream.relay import STREAM_HEADERS, ErrorStyle, forward_headers, raw_forward_headers

router = APIRouter(tags=["openai"])

PROGRESS_HEADER = "x-llamaman-loading-progress"
PROGRESS_FIELD = "llamaman_loading_progress"
# Seconds between two "still loading" notes on a cold start; short enough that proxies with idle
# timeouts keep the connection open.
PROGRESS_INTERVAL = 2.0
# Query parameters LlamaMan reads itself (router mode's ?model= and ?autoload=) and keeps from upstream.
_OWN_PARAMS = frozenset({"model", "autoload"})


# ---- shared pass-through -----------------------------------------------------------------------
def upstream_params(request: Request) -> list[tuple[str, str]] | None:
    """The request's query minus LlamaMan's own parameters; None (nothing to encode) in the common case."""
    if not request.scope.get("query_string"):
        return None
    return [(k, v) for k, v in request.query_params.multi_items() if k not in _OWN_PARAMS]


async def check_autoload(services: Services, request: Request, model: str) -> None:
    """Router mode's ``?autoload=false``: answer instead of starting a model that is not loaded."""
    if not request.scope.get("query_string"):
        return
    flag = request.query_params.get("autoload")
    if flag is None or flag.lower() not in ("0", "false", "no", "off"):
        return
    entry = await resolve_or_404(services, model)
    if services.router.status(entry) != "loaded":
        raise ProxyError(400, f"model '{model}' is not loaded and autoload is off")


async def resolve_or_404(services: Services, model: str) -> ModelEntry:
    try:
        return await services.router.aresolve(model)
    except ModelNotFound as exc:
        raise ProxyError.of(exc, f"model '{model}' not found") from None


def encode_body(body: dict[str, Any], raw: bytes, lease: Lease, *, sampling: bool, changed: bool) -> bytes:
    """The bytes to send upstream: the client's own unless something had to change."""
    # model_fields_set is empty for an instance without overrides: skip the per-request dump.
    if sampling and lease.instance.settings.sampling.model_fields_set:
        changed = apply_sampling(body, lease) or changed
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode() if changed else raw


async def pass_through(
    request: Request,
    path: str,
    *,
    style: ErrorStyle = "openai",
    sampling: bool = False,
    body_and_raw: tuple[dict[str, Any], bytes] | None = None,
    changed: bool = False,
) -> Response:
    """Route a JSON POST by its ``model`` field to an instance and relay the answer."""
    services = services_of(request)
    body, raw = body_and_raw if body_and_raw is not None else await read_json(request)
    model = require_model(body)
    # Another node (or a peer) serves it; that node applies its own sampling overrides, and this
    # node its own if the request falls back here.
    remote = remote_lease(
        services,
        model,
        local_body=lambda lease: encode_body(body, raw, lease, sampling=sampling, changed=changed),
    )
    if remote is not None:
        content = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode() if changed else raw
        return await services.relay.forward(
            remote, "POST", path, content=content, headers=raw_forward_headers(request.scope),
            params=upstream_params(request), style=style, receive=request.receive,
        )  # fmt: skip
    await check_autoload(services, request, model)
    lease = await lease_for(services, model)
    try:
        content = encode_body(body, raw, lease, sampling=sampling, changed=changed)
    except BaseException:
        lease.release()
        raise
    return await services.relay.forward(
        lease, "POST", path, content=content, headers=raw_forward_headers(request.scope),
        params=upstream_params(request), style=style, receive=request.receive,
    )  # fmt: skip


# ---- model listings ----------------------------------------------------------------------------
def listing_identity(request: Request) -> Identity | None:
    """Who asks for a model listing (None: nobody, with require-auth off)."""
    return request_identity(request.scope)


def model_names(entry: ModelEntry, *listed: str) -> set[str]:
    """Every name a key's allow-list may match for ``entry``, as the auth middleware checks them."""
    return {*listed, entry.name, entry.rel_path, entry.rel_path.removesuffix(".gguf"), _rel_stem(entry)}


def may_list(identity: Identity | None, entry: ModelEntry, *listed: str) -> bool:
    """A key limited to some models sees only those models in listings."""
    return identity is None or identity.may_use(model_names(entry, *listed))


def _status_object(
    services: Services, entry: ModelEntry, instances: list[Any], identity: Identity | None
) -> dict[str, Any]:
    value = services.router.status(entry)
    status: dict[str, Any] = {"value": value}
    live = [m for m in instances if m.state in (InstanceState.HEALTHY, InstanceState.STARTING)] or instances
    # Launch arguments reveal paths and settings of the box (and could carry tokens): only those who
    # manage it see them, with secrets masked.
    if live and identity is not None and identity.can_manage:
        status["args"] = redact_argv(list(live[0].proc.argv))
    if value == "loading":
        # How far the load has got (stage and fraction), as router mode reports a child's load.
        loads = [p for m in instances if (p := services.supervisor.loads.progress(m.id)) is not None]
        if loads:
            status["progress"] = max(loads, key=lambda p: float(p["fraction"]))
    if value == "unloaded" and instances and all(m.state == InstanceState.FAILED for m in instances):
        status["failed"] = True
        status["exit_code"] = instances[0].proc.exit_code
    return status


def _rel_stem(entry: ModelEntry) -> str:
    return (PurePosixPath(entry.rel_path).parent / entry.name).as_posix()


def _model_object(
    services: Services, entry: ModelEntry, instances: list[Any], name: str, identity: Identity | None
) -> dict[str, Any]:
    info = entry.info
    caps = list(entry.capabilities)
    obj: dict[str, Any] = {
        "id": name,
        "object": "model",
        "created": int(entry.modified_at),
        "owned_by": "llamaman",
        "path": entry.rel_path,
        "status": _status_object(services, entry, instances, identity),
        # llama.cpp's shape; it only knows "text" (and "decisions") as outputs, embeddings included.
        "architecture": {
            "input_modalities": ["text", "image"] if "vision" in caps else ["text"],
            "output_modalities": ["text"],
        },
        "meta": {
            "n_ctx_train": info.context_length if info else None,
            "n_embd": info.embedding_length if info else None,
            "n_params": info.parameter_count if info else None,
            "size": entry.size_bytes,
            "capabilities": caps,
        },
    }
    if name not in (entry.name, _rel_stem(entry)):
        obj["alias_of"] = entry.name
    return obj


_scans: weakref.WeakKeyDictionary[ModelLibrary, asyncio.Future[list[ModelEntry]]] = (
    weakref.WeakKeyDictionary()
)


async def _scan(library: ModelLibrary) -> list[ModelEntry]:
    """A fresh scan, shared by every listing that asks while one is running (clients poll /v1/models)."""
    running = _scans.get(library)
    if running is None or running.done():
        running = _scans[library] = asyncio.ensure_future(library.ascan())
    return await asyncio.shield(running)


async def model_objects(services: Services, identity: Identity | None = None) -> list[dict[str, Any]]:
    """Every launchable library model (by file stem) and every alias, with its router status; those
    ``identity`` may use only, with launch arguments only when it may manage the box."""
    models = [e for e in await _scan(services.library) if e.launchable]
    by_path: dict[str, list[Any]] = {}
    for m in services.supervisor.list():
        by_path.setdefault(m.record.model_path, []).append(m)
    stems = Counter(e.name for e in models)
    out = []
    seen = set()
    for e in models:
        # Two files with one stem in different folders: the folder tells them apart (and resolves).
        name = e.name if stems[e.name] == 1 else _rel_stem(e)
        seen.add(name)
        if may_list(identity, e, name):
            out.append(_model_object(services, e, by_path.get(e.rel_path, []), name, identity))
    for alias in sorted(services.aliases.aliases):
        if alias in seen:
            continue
        target = services.router.resolve(alias)
        if target is not None and may_list(identity, target, alias):
            out.append(_model_object(services, target, by_path.get(target.rel_path, []), alias, identity))
    merge_openai(services, out, identity)
    return out


@router.get("/v1/models")
async def list_models(request: Request) -> JSONResponse:
    objects = await model_objects(services_of(request), listing_identity(request))
    return JSONResponse({"object": "list", "data": objects})


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, request: Request) -> JSONResponse:
    # A model hidden from the key answers as if it did not exist.
    for obj in await model_objects(services_of(request), listing_identity(request)):
        if obj["id"] == model_id:
            return JSONResponse(obj)
    raise ProxyError(404, f"model '{model_id}' not found")


# ---- generation --------------------------------------------------------------------------------
def _wants_progress(request: Request, body: dict[str, Any], flag: Any) -> bool:
    if body.get("stream") is not True:
        return False
    if flag is True:
        return True
    header = request.headers.get(PROGRESS_HEADER)
    return header is not None and header.strip().lower() in ("1", "true", "yes", "on")


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    body, raw = await read_json(request)
    # Only pop when present: the common body goes upstream as the client's own bytes.
    flag = body.pop(PROGRESS_FIELD, None) if PROGRESS_FIELD in body else None
    changed = flag is not None
    services = services_of(request)
    if _wants_progress(request, body, flag) and remote_lease(services, model := require_model(body)) is None:
        entry = await resolve_or_404(services, model)
        if services.router.status(entry) != "loaded":
            await check_autoload(services, request, model)
            return StreamingResponse(
                _loading_stream(request, services, entry, model, body, raw, changed),
                media_type="text/event-stream",
                headers=STREAM_HEADERS,
            )
    return await pass_through(
        request, "/v1/chat/completions", sampling=True, body_and_raw=(body, raw), changed=changed
    )


@router.post("/v1/completions")
async def completions(request: Request) -> Response:
    return await pass_through(request, "/v1/completions", sampling=True)


@router.post("/v1/embeddings")
async def embeddings(request: Request) -> Response:
    return await pass_through(request, "/v1/embeddings")


# Routes that generate text, whose bodies get the instance's forced sampling values.
_GENERATING = frozenset({"responses", "chat/completions", "completions"})


@router.post("/v1/{path:path}")
async def any_v1(path: str, request: Request) -> Response:
    """Any other OpenAI-style route llama-server serves (responses, rerank, input_tokens, ...)."""
    return await pass_through(request, f"/v1/{path}", sampling=path in _GENERATING)


# ---- loading progress on a cold start ----------------------------------------------------------
def _chunk(cid: str, model: str, delta: dict[str, Any]) -> bytes:
    obj = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
    }
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"


async def _loading_stream(
    request: Request,
    services: Services,
    entry: ModelEntry,
    model: str,
    body: dict[str, Any],
    raw: bytes,
    changed: bool,
) -> AsyncIterator[bytes]:
    """Reasoning notes while the model loads, then the real stream in the same response."""
    cid = f"chatcmpl-loading-{secrets.token_hex(6)}"
    t0 = time.monotonic()
    yield _chunk(cid, model, {"role": "assistant", "reasoning_content": f"loading {entry.name}…"})
    acquiring = asyncio.ensure_future(lease_for(services, model))
    try:
        # A note per load stage as it is reached, and one at least every PROGRESS_INTERVAL.
        async with services.events.subscribe("instance.progress") as stages:
            said = None
            while not acquiring.done():
                stage = asyncio.ensure_future(stages.get())
                done, _ = await asyncio.wait(
                    {acquiring, stage}, timeout=PROGRESS_INTERVAL, return_when="FIRST_COMPLETED"
                )
                stage.cancel()
                note = _load_note(services, entry)
                # Woken by a stage: only a new one is news. By the clock: a sign of life either way.
                if not acquiring.done() and (not done or note not in (said, ".")):
                    said = note
                    yield _chunk(cid, model, {"reasoning_content": note})
        try:
            lease = acquiring.result()
        except ProxyError as exc:
            yield stream_error_line("openai", exc.message)
            return
        note = f"\n{entry.name} loaded in {time.monotonic() - t0:.1f}s\n\n"
        yield _chunk(cid, model, {"reasoning_content": note})
        content = encode_body(body, raw, lease, sampling=True, changed=changed)
        response = await services.relay.forward(
            lease, "POST", "/v1/chat/completions", content=content, headers=forward_headers(request.headers),
            params=upstream_params(request), style="openai",
        )  # fmt: skip
        if isinstance(response, StreamingResponse):
            # The response object is never sent itself: its body generator's own finally (reached by
            # aclose, also when the client leaves mid-stream) closes upstream and releases the lease.
            pieces = response.body_iterator
            try:
                async for piece in pieces:
                    yield piece if isinstance(piece, bytes) else str(piece).encode()
            finally:
                closer = getattr(pieces, "aclose", None)
                if closer is not None:
                    await closer()
        else:
            # Headers are long gone: an upstream refusal can only be told as a stream event.
            text = bytes(response.body).decode(errors="replace").strip()
            yield b"data: " + (text.encode() if text.startswith("{") else _error_json(text)) + b"\n\n"
    finally:
        if not acquiring.done():
            acquiring.cancel()
        elif not acquiring.cancelled() and acquiring.exception() is None:
            # Idempotent: a no-op when the relay already released it, the release when it never got it.
            acquiring.result().release()


def _load_note(services: Services, entry: ModelEntry) -> str:
    """How far the model's load has got, when its log tells; a dot otherwise."""
    for m in services.supervisor.list():
        if m.record.model_path == entry.rel_path and (p := services.supervisor.loads.progress(m.id)):
            return f"\n{p['stage']} {p['fraction']:.0%}"
    return "."


def _error_json(message: str) -> bytes:
    return json.dumps({"error": {"message": message or "upstream error", "type": "server_error"}}).encode()
