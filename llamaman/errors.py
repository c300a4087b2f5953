"""Turn every failure into a 4xx/5xx JSON answer a user can act on (never a traceback)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from llamaman.hub import DownloadError
from llamaman.library import LibraryError
from llamaman.supervisor import InstanceError

log = logging.getLogger(__name__)


def describe_validation(errors: list[Any]) -> str:
    parts = []
    for e in errors:
        loc = [str(p) for p in e.get("loc", ()) if p not in ("body", "query", "path")]
        where = ".".join(loc)
        msg = str(e.get("msg", "invalid value")).removeprefix("Value error, ")
        parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(parts) or "invalid request"


def error_body(message: str, **extra: Any) -> dict[str, Any]:
    return {"error": message, "detail": message, **extra}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(InstanceError)
    async def _instance(_: Request, exc: InstanceError) -> JSONResponse:
        return JSONResponse(error_body(exc.message), status_code=exc.status_code)

    @app.exception_handler(DownloadError)
    async def _download(_: Request, exc: DownloadError) -> JSONResponse:
        return JSONResponse(error_body(exc.message), status_code=exc.status)

    @app.exception_handler(LibraryError)
    async def _library(_: Request, exc: LibraryError) -> JSONResponse:
        return JSONResponse(error_body(str(exc)), status_code=400)

    @app.exception_handler(RequestValidationError)
    async def _request_validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        return JSONResponse(
            error_body(describe_validation(errors), errors=_jsonable(errors)), status_code=422
        )

    @app.exception_handler(ValidationError)
    async def _validation(_: Request, exc: ValidationError) -> JSONResponse:
        errors = list(exc.errors())
        return JSONResponse(
            error_body(describe_validation(errors), errors=_jsonable(errors)), status_code=422
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        msg = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        return JSONResponse(error_body(msg), status_code=exc.status_code, headers=exc.headers)


def _jsonable(errors: list[Any]) -> list[dict[str, Any]]:
    return [{"loc": list(map(str, e.get("loc", ()))), "msg": str(e.get("msg", ""))} for e in errors]
