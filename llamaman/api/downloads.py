"""/api/downloads: Hugging Face downloads (queue, progress, cancel, logs) as the original LlamaMan."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from llamaman.api.deps import ServicesDep
from llamaman.api.sse import object_events, sse
from llamaman.core.events import Event
from llamaman.downloads.job import TERMINAL

router = APIRouter(prefix="/api", tags=["downloads"])


class DownloadRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    repo_id: str = Field(description="Hugging Face repo, e.g. 'bartowski/Qwen2.5-0.5B-Instruct-GGUF'")
    filename: str | None = Field(default=None, description="One file; blank downloads the whole repo")
    hf_token: str | None = Field(default=None, description="Token for this download; blank uses the setting")
    speed_limit_mbps: float = Field(default=0, ge=0, description="Limit for this download; 0 = none")
    revision: str = Field(default="main", max_length=64)
    gguf_only: bool = Field(default=True, description="Whole-repo downloads fetch only GGUF files")
    dest_dir: str | None = Field(default=None, description="Folder under MODELS_DIR; default: the repo id")

    @field_validator("filename", "hf_token", "dest_dir", mode="before")
    @classmethod
    def _blank_is_none(cls, v: Any) -> Any:
        return None if isinstance(v, str) and not v.strip() else v


@router.get("/downloads")
async def list_downloads(services: ServicesDep) -> list[dict[str, Any]]:
    return services.downloads.views()


@router.post("/downloads", status_code=201)
async def start_download(body: DownloadRequest, services: ServicesDep) -> dict[str, Any]:
    job = await services.downloads.create(
        body.repo_id,
        body.filename,
        revision=body.revision.strip() or "main",
        hf_token=body.hf_token,
        speed_limit_mbps=body.speed_limit_mbps,
        gguf_only=body.gguf_only,
        dest_dir=body.dest_dir,
    )
    return job.view()


@router.get("/downloads/{download_id}")
async def get_download(download_id: str, services: ServicesDep) -> dict[str, Any]:
    return services.downloads.get(download_id).view()


@router.delete("/downloads/{download_id}")
async def cancel_download(download_id: str, services: ServicesDep) -> dict[str, Any]:
    return (await services.downloads.cancel(download_id)).view()


@router.post("/downloads/{download_id}/resume")
async def resume_download(download_id: str, services: ServicesDep) -> dict[str, Any]:
    return (await services.downloads.resume(download_id)).view()


@router.delete("/downloads/{download_id}/remove")
async def remove_download(download_id: str, services: ServicesDep) -> dict[str, Any]:
    await services.downloads.remove(download_id)
    return {"removed": download_id}


@router.get("/downloads/{download_id}/logs")
async def download_logs(
    download_id: str, services: ServicesDep, lines: int = Query(200, ge=0, le=10_000)
) -> dict[str, Any]:
    job = services.downloads.get(download_id)
    logs = list(job.logs)
    return {"id": download_id, "status": job.status, "lines": logs[-lines:] if lines else []}


@router.get("/downloads/{download_id}/logs/stream")
async def download_log_stream(
    download_id: str, request: Request, services: ServicesDep, lines: int = Query(100, ge=0, le=10_000)
) -> StreamingResponse:
    """Server-sent events: the last ``lines`` log lines, then new lines, ``progress`` and ``state``
    events; a final ``done`` event once the download has finished."""
    job = services.downloads.get(download_id)

    def render(ev: Event) -> tuple[list[str], bool]:
        if ev.topic == "download.log":
            return [sse(ev.data["line"])], False
        if ev.topic == "download.progress":
            return [sse(ev.data, "progress")], False
        if ev.topic == "download.state":
            new = ev.data["new"]
            if new in TERMINAL:
                return [sse(new, "state"), sse(new, "done")], True
            return [sse(new, "state")], False
        return [], ev.topic == "download.removed"

    def snapshot() -> tuple[list[str], bool]:
        backlog = [sse(line) for line in (list(job.logs)[-lines:] if lines else [])]
        finished = job.status in TERMINAL
        if finished:
            backlog.append(sse(job.status, "done"))
        return backlog, finished

    return object_events(request, services.events, "download.", download_id, snapshot, render)
