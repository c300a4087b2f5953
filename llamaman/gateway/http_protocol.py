"""The HTTP protocol every LlamaMan port is served with: uvicorn's httptools protocol plus the two
limits it lacks, a cap on the size of a request's headers and a deadline for them to arrive.

Without them one client could grow the process by sending megabytes of headers, or hold connections
open forever by sending a header line every few seconds (slowloris). A request whose headers pass
``MAX_HEADER_BYTES`` is answered 431 and its connection closed; one whose headers are not complete
within ``HEADER_TIMEOUT`` seconds of its first byte (or of the connection opening) gets 408 and is
closed. Both are checked per parser callback and per received chunk, so the hot path pays two
comparisons per chunk.

Settings (environment): ``LLAMAMAN_MAX_HEADER_KB`` (default 64), ``LLAMAMAN_HEADER_TIMEOUT``
(seconds, default 15).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


def _env_number(name: str, default: float) -> float:
    try:
        value = float(os.environ.get(name, "") or default)
    except ValueError:
        return default
    return value if value > 0 else default


MAX_HEADER_BYTES = int(_env_number("LLAMAMAN_MAX_HEADER_KB", 64) * 1024)
HEADER_TIMEOUT = _env_number("LLAMAMAN_HEADER_TIMEOUT", 15.0)


class CoalescingTransport:
    """A transport that sends a response's head together with the first body bytes that follow.

    uvicorn writes a response's status line and headers as soon as the app sends them, and the body
    with the next message, so a plain answer would cost two system calls and could wake its client
    twice. A head is held until the next write (which leaves with it in one ``send``), the end of
    the event loop's current turn, or the connection closing; everything else is the wrapped
    transport's.
    """

    __slots__ = ("_held", "_loop", "_t")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._t = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._t.write(held + data)
        elif data.startswith(b"HTTP/1."):
            self._held = data
            self._loop.call_soon(self.flush)
        else:
            self._t.write(data)

    def write_whole(self, data: bytes) -> None:
        """A whole answer (head and body): it leaves at once, behind anything held. Held instead,
        it would wait for the end of the loop's turn, behind the bookkeeping that follows it."""
        held, self._held = self._held, None
        self._t.write(data if held is None else held + data)

    def flush(self) -> None:
        held, self._held = self._held, None
        if held is not None and not self._t.is_closing():
            self._t.write(held)

    def close(self) -> None:
        self.flush()
        self._t.close()

    def abort(self) -> None:
        self._held = None
        self._t.abort()

    def is_closing(self) -> bool:
        return self._t.is_closing()

    def get_write_buffer_size(self) -> int:
        return self._t.get_write_buffer_size() + len(self._held or b"")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._t, name)


class _HeaderLimit(Exception):
    """Raised inside a parser callback to stop parsing a request that was already refused."""


def _answer(status: int, reason: str, message: str) -> bytes:
    body = b'{"error":"%s","detail":"%s"}' % (message.encode(), message.encode())
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
        b"connection: close\r\n\r\n%s" % (status, reason.encode(), len(body), body)
    )


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """httptools with a header size limit and a header read deadline."""

    max_header_bytes = MAX_HEADER_BYTES
    header_timeout = HEADER_TIMEOUT

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_headers = True
        self._header_bytes = 0  # request line and complete header lines, as parsed
        self._partial_bytes = 0  # bytes received while headers were still incomplete
        self._refused = False
        self._header_timer: asyncio.TimerHandle | None = None
        self._header_started: float | None = None  # when the current request's first byte came

    # ---- connection ----------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        super().data_received(data)
        if self._in_headers and not self._refused:
            # Headers still incomplete after this chunk: all of it was header bytes, buffered by
            # the parser until the line ends (a single 5 MB header never reaches on_header).
            self._partial_bytes += len(data)
            if self._partial_bytes > self.max_header_bytes:
                self._refuse_too_large()
            elif self._header_started is not None:
                self._arm(self._header_started)

    def write_whole(self, data: bytes) -> None:
        """Send a whole answer at once (see ``CoalescingTransport.write_whole``)."""
        transport = self.transport
        if isinstance(transport, CoalescingTransport):
            transport.write_whole(data)
        else:
            transport.write(data)

    def send_400_response(self, msg: str) -> None:
        if self._refused:
            return  # the parser stopped because we refused the request; the answer is sent
        super().send_400_response(msg)

    # ---- parser callbacks ------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_headers = True
        self._header_bytes = 0
        self._partial_bytes = 0
        # The deadline counts from here (or from the connection opening, whose timer may still
        # run), but a timer is only set if the headers are still incomplete once this chunk is
        # parsed: most requests arrive whole, and a timer made and cancelled for each of them is a
        # measurable share of a small request's cost.
        self._header_started = self.loop.time()

    # The two callbacks below do uvicorn's own work after the count instead of calling it: they run
    # once per header line of every request, and a call saved there is a measurable share of a small
    # request's cost.
    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        name = name.lower()
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._header_started = None
        self._disarm()
        self.start_request()

    def start_request(self) -> None:
        """Hand the request whose headers are in to the ASGI app (a subclass may serve it itself)."""
        super().on_headers_complete()

    # ---- limits ----------------------------------------------------------------------------------
    def _count(self, n: int) -> None:
        self._header_bytes += n
        if self._header_bytes > self.max_header_bytes:
            self._refuse_too_large()
            raise _HeaderLimit

    def _refuse_too_large(self) -> None:
        limit = self.max_header_bytes // 1024
        message = f"request headers are larger than the {limit} KiB this server accepts"
        self._refuse(431, "Request Header Fields Too Large", message)

    def _arm(self, since: float | None = None) -> None:
        if self._header_timer is None and self.header_timeout > 0:
            delay = self.header_timeout if since is None else since + self.header_timeout - self.loop.time()
            self._header_timer = self.loop.call_later(max(delay, 0.0), self._headers_late)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if not self._in_headers or self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a request is still being answered; its successor's bytes wait for it
        message = f"request headers did not arrive within {self.header_timeout:g} seconds"
        self._refuse(408, "Request Timeout", message)

    def _refuse(self, status: int, reason: str, message: str) -> None:
        if self._refused:
            return
        self._refused = True
        self._disarm()
        if not self.transport.is_closing():
            self.transport.write(_answer(status, reason, message))
            self.transport.close()


class QuietProtocol(GuardedHttpToolsProtocol):
    """The guarded protocol with the access log off for one server only: uvicorn's
    ``access_log=False`` empties the shared ``uvicorn.access`` logger, silencing the UI's server too."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.access_log = False
