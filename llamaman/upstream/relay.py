"""Forward a request to an instance's llama-server and relay the answer as it arrives.

Streams are never buffered: each chunk goes to the client as llama-server writes it. The lease on
the instance is released in a ``finally`` whatever happens (done, client gone, upstream dead), and
a client that disconnects closes the upstream request so llama-server frees its slot.

Pass-through requests (``forward``) and Ollama streams (``open_raw``) go over the relay's own light
HTTP/1.1 client (``client.py``); the other translating paths read parsed lines from ``open``, which
keeps the shared httpx client. A pass-through stream (``stream_relay``) is read by the ASGI server's
task, or spliced straight to the client's transport by a server that writes it itself (the fast
lane); nothing is parsed per chunk.

``forward`` sends to whatever its lease names (``UpstreamTarget``): a local instance, or another node
or a peer (``cluster/forward.py``), whose lease offers the next place to try when one fails before its
first byte.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from functools import partial
from typing import Any

import httpx
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope

from llamaman.core.exchange import Exchange, Observer
from llamaman.scheduling.router import Lease
from llamaman.upstream.answers import ErrorStyle, client_fault_status, error_payload
from llamaman.upstream.client import Pending, UpstreamClient
from llamaman.upstream.inflight import CLIENT_LEFT, CUT_OFF, InflightRegistry, RequestCancelled, abortable
from llamaman.upstream.responses import RawResponse, RelayStream
from llamaman.upstream.stream_relay import relay_stream, splice_stream
from llamaman.upstream.target import UpstreamTarget
from llamaman.upstream.wire import UpstreamError, UpstreamResponse

try:
    from orjson import loads as _loads
except ImportError:  # pragma: no cover - orjson comes with NiceGUI
    _loads = json.loads

log = logging.getLogger(__name__)


# Hop-by-hop and length headers are the transport's business, not the payload's.
# ``expect`` too: LlamaMan answered the client's 100-continue and holds the whole body, and passed on,
# it had llama-server answer "100 Continue" as if it were the final answer.
_DROP_REQUEST = {
    "host", "content-length", "connection", "keep-alive", "proxy-connection", "transfer-encoding", "te",
    "upgrade", "expect", "proxy-authorization", "authorization", "x-api-key", "cookie", "accept-encoding",
}  # fmt: skip
_DROP_RESPONSE = {
    "content-length",
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-encoding",
    "server",
    "date",
}
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_DROP_REQUEST_RAW = frozenset(h.encode() for h in _DROP_REQUEST)
_DROP_RESPONSE_RAW = frozenset(h.encode() for h in _DROP_RESPONSE)
_STREAM_RAW = [(k.lower().encode(), v.encode()) for k, v in STREAM_HEADERS.items()]
Headers = Mapping[str, str] | Iterable[tuple[bytes, bytes]]


def stream_headers(content_type: bytes) -> list[tuple[bytes, bytes]]:
    """ASGI headers of a streamed answer LlamaMan writes itself."""
    return [(b"content-type", content_type), *_STREAM_RAW]


def forward_headers(headers: Any) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() not in _DROP_REQUEST}


def forward_header_allowed(name: bytes) -> bool:
    """Whether a request header (name lower-case) goes on to llama-server."""
    return name not in _DROP_REQUEST_RAW


def raw_forward_headers(scope: Scope) -> list[tuple[bytes, bytes]]:
    """``forward_headers`` straight from the ASGI scope (names already lower-case), with no decoding."""
    return [(k, v) for k, v in scope["headers"] if k not in _DROP_REQUEST_RAW]


def response_headers(headers: httpx.Headers) -> dict[str, str]:
    # llama-server's own CORS answer (it reflects any Origin) must not reach browsers: LlamaMan
    # decides who may call it, not the server behind it.
    return {
        k: v
        for k, v in headers.items()
        if k.lower() not in _DROP_RESPONSE and not k.lower().startswith("access-control-")
    }


def _raw_response_headers(upstream: UpstreamResponse) -> list[tuple[bytes, bytes]]:
    out = []
    for k, v in upstream.raw_headers:
        k = k.lower()
        if k not in _DROP_RESPONSE_RAW and not k.startswith(b"access-control-"):
            out.append((k, v))
    return out


class Relay:
    """Owner of the shared upstream client; one per app."""

    def __init__(self, http: httpx.AsyncClient, request_timeout: float) -> None:
        # httpx for ``open`` (the translating surfaces read its lines); the pass-through's own client
        # for ``forward``, where the proxy's per-request cost is decided.
        self.http = http
        self.upstream = UpstreamClient(connect_timeout=5.0)
        self.request_timeout = request_timeout
        # Told of every exchange, in order (the activity log, per-key token usage, ...).
        self.observers: list[Observer] = []
        self.claims: list[Observer] = []
        # Requests queued or running, for the in-flight list (and its cancel button).
        self.inflight = InflightRegistry()

    def add_observer(self, observer: Observer) -> None:
        self.observers.append(observer)

    def add_claim(self, claim: Observer) -> None:
        """``claim`` hears of each exchange as soon as it is recorded, before the observers (which
        may run a moment later, once the answer is sent): for who must know it was recorded at all."""
        self.claims.append(claim)

    def record_soon(self, ex: Exchange) -> None:
        """``record`` once the answer's last bytes are on their way: the activity row, usage and
        metrics are nobody's wait, so they run after the send instead of before it."""
        ex.finished = time.monotonic()
        self._claim(ex)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._observe(ex)
            return
        loop.call_soon(self._observe, ex)

    def record(self, ex: Exchange) -> None:
        ex.finished = time.monotonic()
        self._claim(ex)
        self._observe(ex)

    def cut_off(self, ex: Exchange) -> None:
        """Record ``ex`` as cut off: its task was cancelled (a server stopping, its grace over)."""
        if ex.finished is None:
            ex.status, ex.error = 503, CUT_OFF
            self.record(ex)

    def _claim(self, ex: Exchange) -> None:
        if ex.via is None:
            for claim in self.claims:
                claim(ex)

    def _observe(self, ex: Exchange) -> None:
        self.inflight.forget(ex)
        if ex.via is not None:
            return  # another node forwarded it: that node writes the activity row and counts the usage
        for observer in self.observers:
            try:
                observer(ex)
            except Exception:
                log.exception("request observer failed")

    async def open(
        self,
        lease: Lease,
        method: str,
        path: str,
        *,
        content: bytes | None,
        headers: dict[str, str] | None = None,
        params: Any = None,
    ) -> httpx.Response:
        """Send upstream and return the response with its body not yet read."""
        url = f"{lease.base_url}{path}"
        # The server's own key; a caller's Authorization was dropped with the other request headers.
        headers = {**(headers or {}), **lease.instance.proc.auth_headers}
        req = self.http.build_request(
            method, url, content=content, headers=headers, params=params,
            timeout=httpx.Timeout(self.request_timeout, connect=5.0),
        )  # fmt: skip
        return await self.http.send(req, stream=True)

    async def open_raw(self, lease: Lease, path: str, content: bytes, headers: Headers) -> UpstreamResponse:
        """POST over the pass-through's own client; the answer's body is not yet read."""
        return await self.upstream.request(
            "POST", lease.base_url, path, headers=headers, content=content,
            timeout=self.request_timeout, authorization=lease.instance.proc.auth_header,
            connections=lease.connections,
        )  # fmt: skip

    def send_now(self, lease: UpstreamTarget, path: str, content: bytes, headers: bytes) -> Pending | None:
        """A POST written to a local lease's instance at once, from a plain callback (see
        ``UpstreamClient.send_now``), for ``forward(sent=...)`` to wait on; the caller has its
        exchange's abort drop it (``Exchange.on_abort(pending.abort)``), and drops it itself where
        the request goes no further. ``headers``: the lines to forward, made by ``encode_headers``.
        None: ``forward`` sends the request itself."""
        if lease.prefix or lease.extra_headers:
            return None  # a place elsewhere, with a fail-over of its own: ``forward``'s way
        return self.upstream.send_now(
            lease.base_url, path, headers=headers, content=content,
            timeout=self.request_timeout, authorization=lease.auth_header, connections=lease.connections,
        )  # fmt: skip

    async def forward(
        self,
        lease: UpstreamTarget,
        method: str,
        path: str,
        *,
        content: bytes | None = None,
        headers: Headers | None = None,
        params: Any = None,
        style: ErrorStyle = "openai",
        exchange: Exchange | None = None,
        receive: Receive | None = None,
        settle_later: bool = False,
        sent: Pending | None = None,
    ) -> Response:
        """Pass a request through unchanged and relay the answer (streamed if upstream streams).

        Given the client's ``receive``, a client that hangs up before the answer's head arrives (all
        of a non-streamed generation) aborts the request upstream. With ``settle_later``, an answer
        that comes whole is returned with its ``settle`` (the connection back to the pool, the lease
        released, the accounting) left to the caller, who must call it once the answer is sent.
        ``sent``: the request as ``send_now`` already wrote it."""
        ex = exchange or Exchange(lease.model_name, path)
        ex.note_load(lease.load_duration_ns)
        self.inflight.running(ex)
        try:
            upstream = await self.connect(lease, method, path, headers, content, params, ex, receive, sent)
        except RequestCancelled as exc:
            lease.release()
            ex.status, ex.error = exc_status(exc), exc.message
            self.record(ex)
            return JSONResponse(error_payload(style, exc.message, ex.status), status_code=ex.status)
        except UpstreamError as exc:
            lease.release()
            ex.status, ex.error = 502, f"upstream unreachable: {exc}"
            self.record(ex)
            return JSONResponse(error_payload(style, ex.error, 502), status_code=502)
        except BaseException:
            # Cancelled (a server stopping past its grace): the request ends here, recorded as cut
            # off rather than left listed in flight.
            lease.release()
            self.cut_off(ex)
            raise
        ex.note_load(lease.load_duration_ns)
        ex.node = lease.node
        ex.status = upstream.status_code
        ctype = upstream.header(b"content-type") or ""
        if not streamed(ctype):
            try:
                body = await upstream.aread()
            except UpstreamError as exc:
                ex.status, ex.error = 502, f"upstream failed: {exc}"
                self._settle(upstream, lease, ex, ctype, b"")
                return JSONResponse(error_payload(style, ex.error, 502), status_code=502)
            except BaseException:
                ex.status, ex.error = 503, CUT_OFF
                self._settle(upstream, lease, ex, ctype, b"")
                raise
            ex.first_byte = ex.first_byte or time.monotonic()
            response = whole_response(upstream, body)
            if settle_later:
                response.settle = partial(self._settle, upstream, lease, ex, ctype, body)
            else:
                self._settle(upstream, lease, ex, ctype, body)
            return response
        ex.stream = True
        ex.on_abort(upstream.abort)
        raw = _raw_response_headers(upstream)
        raw += _STREAM_RAW
        return RelayStream(
            relay_stream(upstream, lease, style, ex, self.record_soon),
            lease,
            upstream,
            status_code=upstream.status_code,
            raw_headers=raw,
            splice=partial(splice_stream, upstream, lease, style, ex, self.record_soon),
        )

    def _settle(
        self, upstream: UpstreamResponse, lease: UpstreamTarget, ex: Exchange, ctype: str, body: bytes
    ) -> None:
        """What is left once a whole answer is read: nobody waits for it."""
        upstream.close()
        lease.release()
        ex.first_byte = ex.first_byte or time.monotonic()
        if body and "json" in ctype and ex.status < 300:
            _absorb_json(ex, body)
        self.record_soon(ex)

    async def connect(
        self, lease: UpstreamTarget, method: str, path: str, headers: Headers | None, content: bytes | None,
        params: Any, ex: Exchange, receive: Receive | None, sent: Pending | None = None,
    ) -> UpstreamResponse:  # fmt: skip
        """The answer's head from the lease's place, or from the next one the lease offers when a
        place cannot be reached or fails (5xx) before its first byte: nothing reached the client yet."""
        early = sent
        while True:
            pairs: Headers | None = headers
            if lease.extra_headers:
                pairs = [*_header_pairs(headers), *lease.extra_headers]
            try:
                work = early.head() if early is not None else self.upstream.request(
                    method, lease.base_url, lease.prefix + path, headers=pairs,
                    content=lease.content_for_place(content),
                    params=params, timeout=self.request_timeout, authorization=lease.auth_header,
                    connections=lease.connections,
                )  # fmt: skip
                early = None
                upstream = await abortable(ex, work, receive)
            except UpstreamError as exc:
                if await lease.fail_over(str(exc)):
                    continue
                raise
            if upstream.status_code >= 500 and await lease.fail_over(f"answered {upstream.status_code}"):
                upstream.close()
                continue
            return upstream

    async def stream_lines(self, upstream: httpx.Response) -> AsyncIterator[dict[str, Any]]:
        """Parsed JSON objects of an SSE or NDJSON upstream stream (for translating surfaces)."""
        async for line in upstream.aiter_lines():
            if not line or line.startswith(":") or line.startswith("event:"):
                continue
            if line.startswith("data:"):
                line = line[5:].strip()
                if line == "[DONE]":
                    return
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                yield obj


def streamed(ctype: str) -> bool:
    return "text/event-stream" in ctype or "ndjson" in ctype  # relayed as a stream


def whole_response(upstream: UpstreamResponse, body: bytes) -> RawResponse:
    return RawResponse(body, client_fault_status(upstream.status_code, body), _raw_response_headers(upstream))


def answered_whole(upstream: UpstreamResponse) -> RawResponse | None:
    """The client's answer, as ``forward`` makes it, to an upstream answer in whole that needs
    nothing ``forward`` decides (a stream; a server error, where another place may be tried)."""
    if upstream.status_code >= 500 or streamed(upstream.header(b"content-type") or ""):
        return None
    body = upstream.whole_body()
    return None if body is None else whole_response(upstream, body)


def _header_pairs(headers: Headers | None) -> list[tuple[bytes, bytes]]:
    if headers is None:
        return []
    if isinstance(headers, Mapping):
        return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    return list(headers)


def _absorb_json(ex: Exchange, body: bytes) -> None:
    try:
        obj = _loads(body)
    except (ValueError, UnicodeDecodeError):
        return
    if isinstance(obj, dict):
        ex.absorb_usage(obj)


def exc_status(exc: RequestCancelled) -> int:
    # 499 is what proxies log for a client that hung up; an administrator's cancel is a conflict.
    return 499 if exc.message == CLIENT_LEFT else 409
