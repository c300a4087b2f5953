"""/api/backup and /api/restore: export and re-import models' sources, presets and aliases."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Body
from fastapi.responses import JSONResponse

from llamaman.api.backup_bundle import export_backup, restore_backup
from llamaman.api.deps import ServicesDep

router = APIRouter(prefix="/api", tags=["backup"])


@router.get("/backup")
async def backup(services: ServicesDep) -> JSONResponse:
    name = time.strftime("llamaman-backup-%Y%m%d-%H%M%S.json")
    return JSONResponse(
        await export_backup(services), headers={"Content-Disposition": f'attachment; filename="{name}"'}
    )


@router.post("/restore")
async def restore(services: ServicesDep, body: Any = Body(...)) -> dict[str, Any]:
    # A BackupError is an Invalid: the REST API's error handler answers it.
    return await restore_backup(services, body)
