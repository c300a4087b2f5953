"""Error bodies in the dialect of the endpoint that refuses: Ollama, OpenAI, Anthropic or the REST API's.

The one place they are written, for the auth middleware, the body guard and the database guard.
"""

from __future__ import annotations

from typing import Any

from starlette.types import Scope

from llamaman.auth.access import MODEL_SURFACE, Access
from llamaman.core import errors as e

# The one place domain errors become statuses: the REST API's, and the model endpoints' (Ollama,
# OpenAI, Anthropic; the body is then written in the endpoint's dialect by ``error_in``).
REST_STATUS: dict[type[e.LlamaManError], int] = {
    e.LlamaManError: 400, e.Invalid: 400, e.Rejected: 422, e.Forbidden: 403, e.NotFound: 404,
    e.Conflict: 409, e.Throttled: 429, e.UpstreamFailed: 502, e.Unavailable: 503, e.StorageFull: 507,
}  # fmt: skip
MODEL_STATUS: dict[type[e.LlamaManError], int] = {
    e.LlamaManError: 400, e.Invalid: 400, e.Rejected: 422, e.Forbidden: 403, e.NotFound: 404,
    e.Conflict: 409, e.Throttled: 429, e.UpstreamFailed: 502, e.Unavailable: 503, e.StorageFull: 507,
}  # fmt: skip


def rest_status(exc: e.LlamaManError) -> int:
    return REST_STATUS[e.kind_of(exc)]


def model_status(exc: e.LlamaManError) -> int:
    return MODEL_STATUS[e.kind_of(exc)]


def retry_headers(exc: e.LlamaManError) -> dict[str, str]:
    return {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else {}


e.use_status_source(rest_status)

_OPENAI_CODES = {401: "invalid_api_key", 403: "permission_denied", 415: "unsupported_media_type",
                 429: "rate_limit_exceeded"}  # fmt: skip
_ANTHROPIC_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
    413: "request_too_large", 415: "invalid_request_error", 429: "rate_limit_error",
}  # fmt: skip


def route_path(scope: Scope) -> str:
    path: str = scope.get("path") or "/"
    root: str = scope.get("root_path") or ""
    if root and path.startswith(root):
        path = path[len(root) :] or "/"
    return path


def dialect_body(access: Access, path: str, status: int, message: str) -> dict[str, Any]:
    """An error body in the dialect of the endpoint at ``path`` (Ollama, OpenAI, Anthropic, REST)."""
    return error_in(dialect_of(access, path), status, message)


def dialect_of(access: Access, path: str) -> str:
    if access not in MODEL_SURFACE:
        return "rest"
    if path.startswith("/api/"):
        return "ollama"
    if path.startswith("/v1/messages"):
        return "anthropic"
    return "openai"


def error_in(dialect: str, status: int, message: str) -> dict[str, Any]:
    if dialect == "ollama":
        return {"error": message}
    if dialect == "anthropic":
        kind = _ANTHROPIC_TYPES.get(status, "api_error")
        return {"type": "error", "error": {"type": kind, "message": message}}
    if dialect == "openai":
        kind = "requests" if status == 429 else "invalid_request_error"
        return {"error": {"message": message, "type": kind, "param": None, "code": _OPENAI_CODES.get(status)}}
    return {"error": message, "detail": message}
