"""/api/settings, /api/disk-space, /api/logs/llamaman (LlamaMan's own log) and /health."""

from __future__ import annotations

import logging
import shutil
import sys
import time
from collections import deque
from typing import Any

from fastapi import APIRouter, Body, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from llamaman import __version__
from llamaman.api.deps import ServicesDep
from llamaman.services import Services

router = APIRouter(tags=["system"])


class AppLog(logging.Handler):
    """The newest lines LlamaMan logged (its ``llamaman.*`` loggers, INFO and up), kept in memory so
    the UI and GET /api/logs/llamaman can show them without a log file."""

    def __init__(self, keep: int = 5000) -> None:
        super().__init__(logging.INFO)
        self.lines: deque[str] = deque(maxlen=keep)
        self.count = 0  # lines ever logged, so a reader can tell how many are new since it looked
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
            self.count += 1
        except Exception:  # a log call must never fail the code that logs
            self.handleError(record)

    def tail(self, n: int) -> list[str]:
        return list(self.lines)[-n:] if n else []


APP_LOG = AppLog()


def keep_app_log() -> AppLog:
    """Attach ``APP_LOG`` once. With a handler of its own the ``llamaman`` logger would no longer fall
    back to Python's last-resort handler, so warnings still reach stderr through one added here."""
    logger = logging.getLogger("llamaman")
    if APP_LOG not in logger.handlers:
        if logger.level == logging.NOTSET or logger.level > logging.INFO:
            logger.setLevel(logging.INFO)
        logger.addHandler(APP_LOG)
        if not logging.getLogger().handlers:
            stderr = logging.StreamHandler(sys.stderr)
            stderr.setLevel(logging.WARNING)
            logger.addHandler(stderr)
    return APP_LOG


keep_app_log()


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    # 503 until the services are up, so container health checks and scripts wait for a usable app.
    services = getattr(request.app.state, "services", None)
    if services is None or not services.started:
        return JSONResponse({"status": "starting", "version": __version__}, status_code=503)
    return JSONResponse({"status": "ok", "version": __version__})


def _settings_view(services: Services) -> dict[str, Any]:
    binary = services.supervisor.binary
    return {
        **services.runtime.current.public(),
        # Per setting: "flag" or "env" (pinned: changes are refused), "saved" or "default".
        "sources": services.runtime.sources(),
        "pinned_by": services.runtime.pinned_by(),
        "environment": services.settings.public_dict(),
        "llama_server": binary.to_dict() if binary else None,
        "llama_server_error": services.supervisor.binary_error,
        "database": services.db.backend,
        "version": __version__,
    }


@router.get("/api/settings", tags=["settings"])
async def get_settings(services: ServicesDep) -> dict[str, Any]:
    return _settings_view(services)


@router.post("/api/settings", tags=["settings"])
async def update_settings(services: ServicesDep, body: dict[str, Any] = Body(...)) -> dict[str, Any]:
    await services.runtime.update(body)
    return _settings_view(services)


@router.get("/api/disk-space", tags=["system"])
async def disk_space(services: ServicesDep) -> dict[str, Any]:
    usage = shutil.disk_usage(services.settings.models_dir)
    return {
        "path": str(services.settings.models_dir),
        "total": usage.total,
        "used": usage.used,
        "free": usage.free,
        "percent": round(usage.used / usage.total * 100, 1) if usage.total else 0.0,
    }


@router.get("/api/logs/llamaman", tags=["system"], response_class=PlainTextResponse)
async def llamaman_log(lines: int = Query(1000, ge=0, le=5000), download: bool = False) -> PlainTextResponse:
    """LlamaMan's own newest log lines as text (``download=true``: as a file)."""
    headers = {}
    if download:
        name = time.strftime("llamaman-%Y%m%d-%H%M%S.log")
        headers["Content-Disposition"] = f'attachment; filename="{name}"'
    text = "\n".join(APP_LOG.tail(lines))
    return PlainTextResponse(text + ("\n" if text else ""), headers=headers)
