"""Ollama's ``POST /api/pull`` for Hugging Face GGUF repos.

``hf.co/{user}/{repo}:{quant}`` (also ``huggingface.co/...`` and plain ``{user}/{repo}:{quant}``)
picks the repo's GGUF for that quantization and downloads it through the DownloadManager, reporting
progress as Ollama's NDJSON lines. The pulled name becomes an alias, so a client can chat with the
very name it pulled.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from llamaman.core.errors import NotFound
from llamaman.downloads.hub import DownloadError, RemoteFile, RepoListing, group_key, is_gguf, is_projector
from llamaman.downloads.job import Job
from llamaman.gateway.dialects import model_status
from llamaman.proxy.common import ProxyError, read_json, services_of
from llamaman.services import Services

router = APIRouter(tags=["ollama"])

NOT_FOUND = "pull model manifest: file does not exist"
_HOSTS = ("hf.co/", "huggingface.co/", "www.huggingface.co/")
_NAME_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_POLL = 0.25


@dataclass
class PullName:
    name: str  # what the client asked for, without ":latest": the alias it will chat with
    repo_id: str
    tag: str | None


def parse_name(raw: str) -> PullName:
    name = raw.strip()
    for scheme in ("https://", "http://"):
        if name.lower().startswith(scheme):
            name = name[len(scheme) :]
    if name.lower().endswith(":latest"):
        name = name[: -len(":latest")]
    path = name
    for host in _HOSTS:
        if path.lower().startswith(host):
            path = path[len(host) :]
            break
    repo_id, _, tag = path.partition(":")
    if not _NAME_RE.match(repo_id):
        hint = "only Hugging Face GGUF repos can be pulled (hf.co/<user>/<repo>:<quant>)"
        raise ProxyError(400, f"cannot pull {raw!r}: {hint}")
    return PullName(name=name, repo_id=repo_id, tag=tag or None)


def _groups(files: list[RemoteFile]) -> dict[str, list[RemoteFile]]:
    groups: dict[str, list[RemoteFile]] = {}
    for f in sorted(files, key=lambda f: f.name):
        if is_gguf(f.name) and not is_projector(f.name):
            groups.setdefault(group_key(f.name), []).append(f)
    return groups


def _size(members: list[RemoteFile]) -> int:
    return sum(f.size or 0 for f in members)


def _tag_re(tag: str, strict: bool) -> re.Pattern[str]:
    # Strict: "Q4_K" must not match "Q4_K_M"; loose lets "q8" find "Q8_0".
    tail = r"(?![A-Za-z0-9_])" if strict else r"(?![A-Za-z0-9])"
    return re.compile(rf"(?<![A-Za-z0-9]){re.escape(tag)}{tail}", re.IGNORECASE)


def pick(listing: RepoListing, tag: str | None) -> list[str] | None:
    """The files to pull for ``tag``: one model (all parts of a split) plus its best projector."""
    groups = _groups(listing.files)
    if not groups:
        return None
    chosen: list[RemoteFile] | None = None
    if tag:
        for strict in (True, False):
            rx = _tag_re(tag, strict)
            hits = [g for key, g in groups.items() if rx.search(key)]
            if hits:
                chosen = hits[0]
                break
        if chosen is None:
            return None
    else:
        default = _tag_re("Q4_K_M", True)
        q4 = _tag_re("I?Q4", False)
        chosen = next((g for key, g in groups.items() if default.search(key)), None)
        if chosen is None:
            q4s = [g for key, g in groups.items() if q4.search(key)]
            chosen = min(q4s, key=_size) if q4s else next(iter(groups.values()))
    names = [f.name for f in chosen]
    projectors = sorted(f.name for f in listing.files if is_gguf(f.name) and is_projector(f.name))
    if projectors:
        # Vision models need their projector, as Ollama's own pull of an hf.co model fetches it.
        names.append(min(projectors, key=lambda n: (0 if "f16" in n.lower() else 1, n)))
    return names


def _digest(job: Job, name: str, sha256: str | None) -> str:
    return sha256 or hashlib.sha256(f"{job.record.repo_id}/{name}@{job.record.revision}".encode()).hexdigest()


async def _progress(services: Services, job: Job, name: str) -> AsyncIterator[dict[str, Any]]:
    yield {"status": "pulling manifest"}
    last: dict[str, tuple[int, int]] = {}
    while True:
        finished = job.finished.is_set()
        for f in job.files:
            snap = (f.done, f.size or 0)
            if last.get(f.name) != snap:
                last[f.name] = snap
                digest = _digest(job, f.name, f.sha256)
                yield {
                    "status": f"pulling {digest[:12]}",
                    "digest": f"sha256:{digest}",
                    "total": f.size or 0,
                    "completed": f.done,
                }
        if finished:
            break
        try:
            await asyncio.wait_for(job.finished.wait(), _POLL)
        except TimeoutError:
            pass
    if job.status != "completed":
        yield {"error": f"pull {name}: {job.record.error or job.status}"}
        return
    yield {"status": "verifying sha256 digest"}
    yield {"status": "writing manifest"}
    target = services.downloads.model_path(job)
    if target is not None and services.aliases.aliases.get(name) != target:
        await services.aliases.put(name, target)
    await services.library.ascan()
    yield {"status": "success"}


def _failure_status(job: Job) -> int:
    """The status of a pull whose download failed: its kind (hub unreachable 502, gone 404, no room
    507...), or 409 when it was cancelled; 500 only for a failure nobody foresaw."""
    if job.failure is not None:
        return model_status(job.failure)
    return 409 if job.status == "cancelled" else 500


@router.post("/api/pull")
async def pull(request: Request) -> Response:
    services = services_of(request)
    try:
        body, _ = await read_json(request)
        raw = body.get("model") or body.get("name")
        if not isinstance(raw, str) or not raw.strip():
            raise ProxyError(400, "the request needs a 'model' field naming the model to pull")
        ref = parse_name(raw)
        try:
            try:
                listing = await services.downloads.listing(ref.repo_id)
            except DownloadError as exc:
                services.downloads.record_failure(ref.repo_id, exc, alias=ref.name)
                raise
            files = pick(listing, ref.tag)
            if files is None:
                raise ProxyError(404, NOT_FOUND)
            job = await services.downloads.create(
                ref.repo_id, files=files, listing=listing, alias=ref.name, attach=True
            )
        except DownloadError as exc:
            raise ProxyError.of(exc, NOT_FOUND if isinstance(exc, NotFound) else None) from None
    except ProxyError as exc:
        return exc.response("ollama")

    lines = _progress(services, job, ref.name)
    if body.get("stream", True) is False:
        last: dict[str, Any] = {}
        async for line in lines:
            last = line
        if "error" in last:
            return JSONResponse(last, status_code=_failure_status(job))
        return JSONResponse(last)

    async def ndjson() -> AsyncIterator[bytes]:
        async for line in lines:
            yield json.dumps(line).encode() + b"\n"

    return StreamingResponse(ndjson(), media_type="application/x-ndjson")
