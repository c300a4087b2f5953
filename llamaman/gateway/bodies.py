"""Request bodies, read once and parsed once, strictly, for every surface.

The auth middleware's model check and the handler behind it must see the same request: a body that
one reader takes and another skips (a byte-order mark, UTF-16, a key given twice) would let a key
limited to some models reach another. So a body is read here, with a size limit enforced while it
arrives, kept in ``scope["state"]``, and parsed by ``parse_json`` alone: UTF-8 without a byte-order
mark, no duplicate keys, no NaN/Infinity or numbers beyond a double, at most ``MAX_DEPTH`` levels.

``BodyGuard`` (inside the auth middleware on every port) does the reading and refuses what cannot
be read (413) or parsed (400) in the endpoint's own error dialect; handlers take the parsed object
with ``json_of(scope)`` instead of parsing again.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llamaman.auth.access import Access, Surface, classify
from llamaman.gateway.dialects import dialect_body

MiB = 1024 * 1024
# Model endpoints carry images as base64 and long prompts; everything else is small JSON.
MODEL_BODY_LIMIT = 64 * MiB
RESTORE_BODY_LIMIT = 16 * MiB
MANAGE_BODY_LIMIT = 1 * MiB
MAX_DEPTH = 64

_WITH_BODY = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Bodies relayed to a llama-server untouched (and Ollama blob uploads): their bytes are not ours to parse.
_RAW_PREFIXES = ("/upstream/", "/api/blobs/")
# Top-level fields that name a model; a model-limited key is checked against them.
OLLAMA_MODEL_FIELDS = ("model", "name", "source", "destination")
MODEL_FIELDS = ("model",)

_BODY = "llamaman.body"
_JSON = "llamaman.json"
_ERROR = "llamaman.body_error"
_MISSING = object()


class BodyError(Exception):
    """A body that cannot be accepted; ``status`` is 400 or 413, ``message`` says what to change."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# ---- parsing ---------------------------------------------------------------------------------------
def parse_json(raw: bytes) -> Any:
    """``raw`` as JSON, or BodyError(400) naming what is wrong with it."""
    try:
        obj = orjson.loads(raw)  # refuses a BOM, bad UTF-8, NaN/Infinity, 1e400 and nesting past 1024
    except orjson.JSONDecodeError as exc:
        raise BodyError(400, _describe(raw, exc)) from None
    if type(obj) is dict or type(obj) is list:
        _check_shape(raw, obj)
    return obj


# Below this size, re-encoding the parsed body (in C) and counting is cheaper than walking it.
_REENCODE_BELOW = 256 * 1024


def _check_shape(raw: bytes, obj: dict[str, Any] | list[Any]) -> None:
    """Refuse nesting past MAX_DEPTH and keys given twice (orjson keeps the last one silently).

    Every ':' outside strings separates one pair, and a ':' is never escaped on output; so the
    raw body has as many ':' as the parsed one re-encoded, unless a pair was dropped. An escaped
    colon (backslash-u003a) breaks that count, so such a body takes the exact path.
    """
    if raw.count(b"{") + raw.count(b"[") > MAX_DEPTH or len(raw) >= _REENCODE_BELOW:
        pairs, colons = _walk(obj)  # also refuses nesting past MAX_DEPTH
        expected = pairs + colons
    else:
        expected = orjson.dumps(obj).count(b":")  # too few brackets to nest past MAX_DEPTH
    if raw.count(b":") != expected or b"\\u003" in raw:
        _refuse_duplicates(raw)


def _describe(raw: bytes, exc: orjson.JSONDecodeError) -> str:
    if raw.startswith(b"\xef\xbb\xbf"):
        return "the request body starts with a byte-order mark: send UTF-8 JSON without one"
    if raw[:2] in (b"\xff\xfe", b"\xfe\xff") or b"\x00" in raw[:4]:
        return "the request body must be JSON encoded as UTF-8 (UTF-16 and UTF-32 are not accepted)"
    if "depth limit" in str(exc):
        return f"the request body nests deeper than {MAX_DEPTH} levels"
    pos = getattr(exc, "pos", None)
    if isinstance(pos, int) and (
        "infinity" in str(exc).lower() or raw[pos : pos + 9].lstrip(b"-").startswith((b"NaN", b"Infinity"))
    ):
        where = _field_before(raw, pos)
        what = f"'{where}' must be a finite number" if where else "numbers must be finite"
        return f"{what} (NaN, Infinity and numbers beyond a double are not accepted)"
    return f"request body is not valid JSON: {exc}"


_KEY = re.compile(rb'"((?:[^"\\]|\\.){1,80})"\s*:\s*-?$')


def _field_before(raw: bytes, pos: int) -> str | None:
    """The key whose value starts at ``pos`` (to name it in an error), when there is one."""
    match = _KEY.search(raw[max(0, pos - 200) : pos])
    if match is None:
        return None
    return match.group(1).decode("utf-8", "replace")


def _walk(obj: dict[str, Any] | list[Any]) -> tuple[int, int]:
    """(pairs in every object, ':' inside every string); BodyError past MAX_DEPTH levels.
    Written for speed: it runs on every body of the hot path."""
    pairs = colons = 0
    stack: list[tuple[Any, int]] = [(obj, 1)]
    pop, push = stack.pop, stack.append
    while stack:
        node, depth = pop()
        if depth > MAX_DEPTH:
            raise BodyError(400, f"the request body nests deeper than {MAX_DEPTH} levels")
        deeper = depth + 1
        if type(node) is dict:
            pairs += len(node)
            for k, v in node.items():
                if ":" in k:
                    colons += k.count(":")
                t = type(v)
                if t is str:
                    if ":" in v:
                        colons += v.count(":")
                elif t is dict or t is list:
                    push((v, deeper))
        else:
            for v in node:
                t = type(v)
                if t is str:
                    if ":" in v:
                        colons += v.count(":")
                elif t is dict or t is list:
                    push((v, deeper))
    return pairs, colons


def _refuse_duplicates(raw: bytes) -> None:
    def pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise BodyError(400, f"the request body gives the key '{key[:80]}' more than once")
            seen.add(key)
        return dict(pairs)

    # Depth is already capped, so the recursive parser cannot run out of stack here.
    json.loads(raw, object_pairs_hook=pairs_hook)


def check_model_fields(obj: Any, fields: tuple[str, ...]) -> None:
    """Fields that name a model must be strings (or absent/null): anything else is never checked."""
    if type(obj) is not dict:
        return
    for field in fields:
        value = obj.get(field)
        if value is not None and type(value) is not str:
            raise BodyError(400, f"'{field}' must be a string naming a model")


def model_names(obj: Any, *, ollama: bool) -> list[str]:
    """Model names a parsed body asks for: ``model``, and for Ollama also ``name``, ``source`` and
    ``destination`` (/api/show, /api/pull and /api/copy name models that way)."""
    if type(obj) is not dict:
        return []
    fields = OLLAMA_MODEL_FIELDS if ollama else MODEL_FIELDS
    return [v for f in fields if isinstance(v := obj.get(f), str) and v.strip()]


# ---- reading ---------------------------------------------------------------------------------------
def body_limit(path: str, surface: Surface) -> int:
    if surface == "instance":
        return MODEL_BODY_LIMIT
    if path == "/api/restore":
        return RESTORE_BODY_LIMIT
    if classify(path, surface) is Access.MODEL or path.startswith("/_nicegui"):
        return MODEL_BODY_LIMIT
    return MANAGE_BODY_LIMIT


def _too_large(limit: int) -> BodyError:
    return BodyError(413, f"the request body is larger than the {limit // MiB} MiB this endpoint accepts")


async def read_body(scope: Scope, receive: Receive, limit: int) -> tuple[bytes, Receive]:
    """The whole body, refused as soon as it passes ``limit`` (a Content-Length over it before any
    byte is read); the returned receive replays it to the app as if unread."""
    length = Headers(scope=scope).get("content-length")
    if length is not None:
        try:
            declared = int(length)
        except ValueError:
            raise BodyError(400, "the Content-Length header is not a number") from None
        if declared > limit:
            raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    pending: list[Message] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            pending.append(message)  # the client left; the app will hear it after the body
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        if chunk:
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    pending.insert(0, {"type": "http.request", "body": body, "more_body": False})

    async def replay() -> Message:
        return pending.pop(0) if pending else await receive()

    return body, replay


async def ensure_body(scope: Scope, receive: Receive, surface: Surface) -> Receive:
    """Read the body into the scope's state once (a later call returns a receive that replays it).
    A body that cannot be read is recorded there for ``BodyGuard`` to answer."""
    state = scope.setdefault("state", {})
    if _BODY in state or _ERROR in state:
        return receive
    try:
        body, receive = await read_body(scope, receive, body_limit(_path(scope), surface))
    except BodyError as exc:
        state[_ERROR] = exc
        return receive
    state[_BODY] = body
    return receive


def _path(scope: Scope) -> str:
    path: str = scope.get("path") or "/"
    root: str = scope.get("root_path") or ""
    if root and path.startswith(root):
        path = path[len(root) :] or "/"
    return path


def wants_json(scope: Scope, path: str, surface: Surface) -> bool:
    """Whether this request's body is JSON that LlamaMan itself reads (and so must parse strictly)."""
    ctype = Headers(scope=scope).get("content-type", "").lower()
    if "json" in ctype or not ctype:
        return not path.startswith(_RAW_PREFIXES) or surface == "instance"
    if surface == "instance" or path.startswith(_RAW_PREFIXES) or path.startswith("/_nicegui"):
        return False
    if ctype.startswith(("multipart/", "application/octet-stream")):
        return False
    # The proxy's handlers read JSON whatever the type says (curl -d sends a form type).
    return classify(path, surface) is Access.MODEL


def parsed_body(scope: Scope, surface: Surface) -> Any:
    """The parsed JSON body (None when there is none or it is not JSON LlamaMan reads); parsed at
    most once per request. Raises BodyError for a body that was refused."""
    state = scope.setdefault("state", {})
    error = state.get(_ERROR)
    if error is not None:
        raise error
    cached = state.get(_JSON, _MISSING)
    if cached is not _MISSING:
        return cached
    raw = state.get(_BODY, b"")
    obj: Any = None
    path = _path(scope)
    if raw.strip() and wants_json(scope, path, surface):
        try:
            obj = parse_json(raw)
        except BodyError as exc:
            state[_ERROR] = exc
            raise
        if surface != "instance" and classify(path, surface) is Access.MODEL:
            if type(obj) is not dict:
                refusal = BodyError(400, "request body must be a JSON object")
                state[_ERROR] = refusal
                raise refusal
            check_model_fields(obj, OLLAMA_MODEL_FIELDS if path.startswith("/api/") else MODEL_FIELDS)
    state[_JSON] = obj
    return obj


def cached_body(scope: Scope) -> bytes | None:
    """The body ``BodyGuard`` read, or None when it did not read one."""
    state = scope.get("state") or {}
    return state.get(_BODY)


def remember_body(scope: Scope, raw: bytes) -> None:
    """Keep a body read without the guard (an app served bare, as some tests do)."""
    scope.setdefault("state", {})[_BODY] = raw


def json_of(scope: Scope) -> Any:
    """The body as ``BodyGuard`` parsed it (``_MISSING``-free: None when there was none)."""
    state = scope.get("state") or {}
    return state.get(_JSON)


def has_parsed(scope: Scope) -> bool:
    state = scope.get("state") or {}
    return _JSON in state


# ---- the guard -------------------------------------------------------------------------------------
class BodyGuard:
    """Reads and parses every body before the app sees it; refusals in the endpoint's dialect."""

    def __init__(self, app: ASGIApp, surface: Surface = "main") -> None:
        self.app = app
        self.surface: Surface = surface

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            if scope["method"] in _WITH_BODY:
                receive = await ensure_body(scope, receive, self.surface)
                parsed_body(scope, self.surface)
            else:
                _check_length(scope, body_limit(_path(scope), self.surface))
        except BodyError as exc:
            await refusal(scope, self.surface, exc.status, exc.message)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _check_length(scope: Scope, limit: int) -> None:
    length = Headers(scope=scope).get("content-length")
    if length is not None and length.strip() not in ("", "0"):
        try:
            too_big = int(length) > limit
        except ValueError:
            raise BodyError(400, "the Content-Length header is not a number") from None
        if too_big:
            raise _too_large(limit)


def refusal(scope: Scope, surface: Surface, status: int, message: str) -> JSONResponse:
    path = _path(scope)
    headers = {"Connection": "close"} if status == 413 else None
    return JSONResponse(dialect_body(classify(path, surface), path, status, message), status, headers)
