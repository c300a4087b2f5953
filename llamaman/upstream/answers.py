"""Error answers in the client's dialect, and which of llama-server's failures are the caller's doing."""

from __future__ import annotations

import json
import re
from typing import Any, Literal

ErrorStyle = Literal["openai", "ollama", "anthropic", "raw"]


# llama-server answers 500 when a field of the request fails its parsing (any exception other
# than std::invalid_argument): the request's doing, so the client hears a 400 with llama-server's
# own message. Its 501 (a feature the model was not launched with: embeddings, reranking, infill) is
# something the caller can change too, by asking another model or relaunching this one: a 400.
_CLIENT_FAULT = re.compile(
    rb"[Ff]ailed to parse|json\.exception|type must be|[Mm]issing|[Uu]nsupported|[Ii]nvalid|must be|"
    rb"cannot be|[Ee]xpected|not supported|does not support|out of range|range_check|[Uu]nknown|no such|"
    rb"is required"
)


def client_fault_status(status: int, body: bytes) -> int:
    if status == 501:
        return 400
    if status == 500 and _CLIENT_FAULT.search(body[:4096]) is not None:
        return 400
    return status


def error_payload(style: ErrorStyle, message: str, code: int = 500) -> dict[str, Any]:
    if style == "ollama":
        return {"error": message}
    if style == "anthropic":
        return {"type": "error", "error": {"type": "api_error", "message": message}}
    return {"error": {"message": message, "type": "server_error", "code": code}}


def stream_error_line(style: ErrorStyle, message: str) -> bytes:
    """The error object that ends a broken stream, framed the way the client is reading."""
    payload = json.dumps(error_payload(style, message)).encode()
    if style == "ollama":
        return payload + b"\n"
    if style == "anthropic":
        return b"event: error\ndata: " + payload + b"\n\n"
    return b"data: " + payload + b"\n\n"
