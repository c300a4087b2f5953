"""Turn every failure into a 4xx/5xx JSON answer a user can act on (never a traceback)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llamaman.auth.access import classify
from llamaman.core.errors import LlamaManError
from llamaman.gateway.dialects import dialect_body, rest_status, retry_headers, route_path

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


# A locked SQLite file, a MariaDB that went away, an exhausted pool: worth retrying, not a bug.
DATABASE_ERRORS = (OperationalError, InterfaceError, DisconnectionError, PoolTimeout)
DATABASE_RETRY_AFTER = 5


def database_unavailable(scope: Scope, surface: str, exc: BaseException) -> Response:
    """The one answer to a database that cannot be reached or is busy: 503 with Retry-After, in the
    dialect of the endpoint (Ollama, OpenAI, Anthropic or the REST API's)."""
    log.warning("database unavailable for %s: %s", scope.get("path"), str(exc).splitlines()[0][:200])
    path = route_path(scope)
    message = "the database is busy or unreachable; try again shortly"
    body = dialect_body(classify(path, surface), path, 503, message)
    return JSONResponse(body, 503, {"Retry-After": str(DATABASE_RETRY_AFTER)})


class DatabaseErrorGuard:
    """Outermost on every surface: a database error anywhere (the credential check included)
    becomes ``database_unavailable`` instead of a plain-text 500, if nothing was sent yet."""

    def __init__(self, app: ASGIApp, surface: str = "main") -> None:
        self.app = app
        self.surface = surface

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except DATABASE_ERRORS as exc:
            if started:
                raise
            await database_unavailable(scope, self.surface, exc)(scope, receive, send)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(LlamaManError)
    async def _domain(_: Request, exc: LlamaManError) -> JSONResponse:
        return JSONResponse(error_body(exc.message), status_code=rest_status(exc), headers=retry_headers(exc))

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
