"""The pass-through's HTTP/1.1 client: pooled keep-alive connections to llama-servers on loopback.

httpx costs about 1 ms of CPU per request under uvloop (anyio, httpcore and h11 layers); this
client writes each request in one ``write`` and parses the answer with httptools (uvicorn's own
parser), about 50 µs. It only does what the relay needs: one request per connection at a time,
``Content-Length`` or chunked answers, the body relayed as it arrives with back-pressure, a read
timeout, and ``abort`` to drop a request whose client left (llama-server then frees its slot).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import socket
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import httptools

from llamaman.core.errors import UpstreamFailed
from llamaman.upstream.pacing import PACER

# Pause reading from llama-server while this much of its answer waits for a slow client.
_HIGH_WATER = 256 * 1024


class UpstreamError(UpstreamFailed):
    """The upstream request failed: refused, reset, timed out or answered with garbage."""


class UpstreamTimeout(UpstreamError):
    pass


class UpstreamClosed(UpstreamError):
    """The server closed the connection before the answer was complete."""


@functools.lru_cache(maxsize=1024)
def _split(base_url: str) -> tuple[str, int, bytes]:
    u = urlsplit(base_url)
    if u.scheme != "http" or not u.hostname:
        raise UpstreamError(f"unsupported upstream URL {base_url!r}")
    port = u.port or 80
    return u.hostname, port, f"{u.hostname}:{port}".encode()


class UpstreamResponse:
    """An answer whose body is read as it arrives; ``close`` hands the connection back when the body
    was read to its end, and closes it otherwise."""

    def __init__(self, conn: _Connection, timeout: float, loop: asyncio.AbstractEventLoop) -> None:
        self._conn = conn
        self._loop = loop
        self._timeout = timeout
        self.status_code = 0
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._waiter: asyncio.Future[None] | None = None
        self._complete = False
        self._error: BaseException | None = None
        self._aborted = False
        self._closed = False
        self._activity = loop.time()
        self._timer: asyncio.TimerHandle | None = None
        self._keep_alive = False

    @property
    def aborted(self) -> bool:
        """Whether the request was dropped because its client left."""
        return self._aborted

    def header(self, name: bytes) -> str | None:
        for k, v in self.raw_headers:
            if k.lower() == name:
                return v.decode("latin-1")
        return None

    # ---- fed by the connection -----------------------------------------------------------------
    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        self._activity = self._loop.time()
        if self._buffered > _HIGH_WATER:
            self._conn.pause()
        self._wake()

    def _finish(self, keep_alive: bool) -> None:
        self._complete = True
        self._keep_alive = keep_alive
        self._wake()

    def _fail(self, exc: BaseException) -> None:
        if not self._complete and self._error is None:
            self._error = exc
        self._wake()

    # ---- read ----------------------------------------------------------------------------------
    async def _wait(self) -> None:
        self._waiter = self._loop.create_future()
        if self._timer is None:
            self._timer = self._loop.call_at(self._activity + self._timeout, self._check_timeout)
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _check_timeout(self) -> None:
        # One timer per response, pushed forward while data keeps arriving.
        due = self._activity + self._timeout
        if self._loop.time() < due - 0.001 and not self._complete and self._error is None:
            self._timer = self._loop.call_at(due, self._check_timeout)
            return
        self._timer = None
        if not self._complete:
            self._fail(UpstreamTimeout(f"no data from upstream for {self._timeout:g} s"))
            self._conn.close()

    async def aiter_raw(self, paced: bool = False) -> AsyncIterator[bytes]:
        """The body as llama-server writes it (chunked framing removed); ends quietly after ``abort``.

        ``paced``: a stream relayed to a client. While many run at once it keeps to the shared beat
        (see ``pacing``): after its first two blocks, it stops reading until the next beat and then
        passes on in one block whatever arrived."""
        if paced:
            PACER.streams += 1
        passed = 0
        try:
            while True:
                if self._chunks:
                    chunks, self._chunks = self._chunks, []
                    self._buffered = 0
                    self._conn.resume()
                    # What has already arrived goes on in one piece: one send and one socket write
                    # for several tokens when the client side falls behind, never a wait for more.
                    yield chunks[0] if len(chunks) == 1 else b"".join(chunks)
                    passed += 1
                    if paced and passed >= 2 and PACER.engaged and not self._complete:
                        # Unread, the tokens gather in the socket: one read and one write for all.
                        self._conn.pause()
                        await PACER.beat()
                        self._conn.resume()
                    continue
                if self._aborted:
                    return
                if self._error is not None:
                    raise self._error
                if self._complete:
                    return
                await self._wait()
        finally:
            if paced:
                PACER.streams -= 1

    async def aread(self) -> bytes:
        if self._complete and self._error is None and not self._aborted:
            # A small answer is usually whole by the time its head is read: no iterator needed.
            chunks, self._chunks = self._chunks, []
            self._buffered = 0
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        parts = [c async for c in self.aiter_raw()]
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def abort(self) -> None:
        """Drop the request (its client is gone): the connection closes and reading stops."""
        self._aborted = True
        self.close()
        self._wake()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._conn.done(self._complete and self._keep_alive and self._error is None and not self._aborted)

    async def aclose(self) -> None:
        self.close()


class _Connection(asyncio.Protocol):
    def __init__(self, pool: UpstreamClient, key: tuple[str, int]) -> None:
        self.pool = pool
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: UpstreamResponse | None = None
        self.head: asyncio.Future[None] | None = None
        self.lost = False
        self.got_data = False
        self.paused = False
        self.idle_since = 0.0
        self.head_only = False
        self.until_close = False

    # ---- asyncio.Protocol ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.got_data = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._error(UpstreamError(f"malformed answer from upstream: {exc}"))
            self.close()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.response is not None and not self.response._complete:
            if self.until_close and self.head is not None and self.head.done():
                self.response._finish(False)  # no length and not chunked: the close ends the body
                return
            self._error(UpstreamClosed(f"upstream closed the connection{f': {exc}' if exc else ''}"))

    # ---- httptools callbacks ---------------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        if self.response is not None:
            self.response.raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        r = self.response
        if r is not None:
            r.status_code = self.parser.get_status_code()
            names = {k.lower() for k, _ in r.raw_headers}
            self.until_close = b"content-length" not in names and b"transfer-encoding" not in names
            if self.head_only or r.status_code in (204, 304):
                r._finish(False)  # no body follows; the parser cannot know that for HEAD
        if self.head is not None and not self.head.done():
            self.head.set_result(None)

    def on_body(self, body: bytes) -> None:
        if self.response is not None:
            self.response._feed(body)

    def on_message_complete(self) -> None:
        if self.response is not None:
            self.response._finish(self.parser.should_keep_alive())

    # ---- use -------------------------------------------------------------------------------------
    def _error(self, exc: BaseException) -> None:
        if self.head is not None and not self.head.done():
            self.head.set_exception(exc)
        if self.response is not None:
            self.response._fail(exc)

    def pause(self) -> None:
        if not self.paused and self.transport is not None and not self.lost:
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.paused and self.transport is not None and not self.lost:
            self.paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self.lost = True

    def done(self, reusable: bool) -> None:
        """The response is finished with: back to the pool, or closed."""
        self.response = None
        self.head = None
        if reusable and not self.lost:
            self.resume()
            self.pool._put(self)
        else:
            self.close()


def _encode_headers(headers: Mapping[str, str] | Iterable[tuple[bytes, bytes]] | None) -> bytes:
    if not headers:
        return b""
    if isinstance(headers, Mapping):
        return b"".join(f"{k}: {v}\r\n".encode("latin-1") for k, v in headers.items())
    return b"".join(k + b": " + v + b"\r\n" for k, v in headers)


class UpstreamClient:
    """Keep-alive connections per (host, port), most recently used first."""

    def __init__(self, connect_timeout: float = 5.0, max_idle: int = 256, idle_expiry: float = 30.0) -> None:
        self.connect_timeout = connect_timeout
        self.max_idle = max_idle
        self.idle_expiry = idle_expiry
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        # Requests per (host, port) still waiting for their answer's head.
        self._waiting: dict[tuple[str, int], int] = {}
        self._closed = False

    def _put(self, conn: _Connection) -> None:
        idle = self._idle.setdefault(conn.key, [])
        # llama-server serves each connection on one of a few HTTP threads for as long as it is kept
        # alive (5 s idle): a kept connection while other requests wait could leave them queued
        # behind it for those 5 s. Close it so a waiting connection gets the thread.
        if self._closed or len(idle) >= self.max_idle or self._waiting.get(conn.key):
            conn.close()
            return
        conn.idle_since = time.monotonic()
        idle.append(conn)

    def _take(self, key: tuple[str, int]) -> _Connection | None:
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if conn.lost or now - conn.idle_since > self.idle_expiry:
                conn.close()
                continue
            return conn
        return None

    async def _connect(self, key: tuple[str, int]) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            # Not ``wait_for``: on Python 3.11 it returns the connection, swallowing the cancel, when
            # the request is cancelled (an administrator's cancel) just as the connection is made.
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(lambda: _Connection(self, key), key[0], key[1])
        except TimeoutError:
            raise UpstreamTimeout(f"connecting to {key[0]}:{key[1]} timed out") from None
        except OSError as exc:
            raise UpstreamError(f"cannot connect to {key[0]}:{key[1]}: {exc.strerror or exc}") from None
        return conn

    async def request(
        self,
        method: str,
        base_url: str,
        target: str,
        *,
        headers: Mapping[str, str] | Iterable[tuple[bytes, bytes]] | None = None,
        content: bytes | None = None,
        params: Any = None,
        timeout: float = 300.0,
        authorization: bytes | None = None,
    ) -> UpstreamResponse:
        """Send a request and return once the answer's status and headers are in. ``authorization``
        is the value of an ``Authorization`` header (the server's own key), added as is."""
        host, port, host_header = _split(base_url)
        if params:
            target += ("&" if "?" in target else "?") + urlencode(params)
        if not _PLAIN_TARGET(target):
            target = quote(target, safe=_TARGET_SAFE)
        head = b"%s %s HTTP/1.1\r\nHost: %s\r\n%s" % (
            method.encode(), target.encode("latin-1"), host_header, _encode_headers(headers),
        )  # fmt: skip
        if authorization:
            head += b"Authorization: " + authorization + b"\r\n"
        if content is not None or method in ("POST", "PUT", "PATCH"):
            head += b"Content-Length: %d\r\n" % len(content or b"")
        data = head + b"\r\n" + (content or b"")
        key = (host, port)
        conn = self._take(key)
        reused = conn is not None
        for _attempt in range(2):
            if conn is None:
                conn = await self._connect(key)
            try:
                return await self._send(conn, data, timeout, method == "HEAD")
            except UpstreamClosed:
                # A kept-alive connection the server closed as we reused it: nothing was answered,
                # so one retry on a fresh connection is safe.
                if not reused or conn.got_data:
                    raise
                conn, reused = None, False
        raise UpstreamClosed("upstream closed the connection")  # pragma: no cover - loop returns or raises

    async def _send(
        self, conn: _Connection, data: bytes, timeout: float, head_only: bool
    ) -> UpstreamResponse:
        loop = asyncio.get_running_loop()
        response = UpstreamResponse(conn, timeout, loop)
        conn.response = response
        conn.got_data = False
        conn.head_only = head_only
        conn.until_close = False
        conn.head = head = loop.create_future()
        conn.parser = httptools.HttpResponseParser(conn)
        assert conn.transport is not None
        if conn.lost or conn.transport.is_closing():
            conn.done(False)
            raise UpstreamClosed("upstream closed the connection")
        conn.transport.write(data)
        timer = loop.call_later(timeout, _expire, head, timeout)
        key = conn.key
        self._waiting[key] = self._waiting.get(key, 0) + 1
        try:
            await head
        except BaseException:
            conn.done(False)
            raise
        finally:
            timer.cancel()
            self._waiting[key] -= 1
        return response

    def drop_idle(self, base_url: str) -> None:
        """Close the kept connections to one server: llama-server waits for them (about 0.1 s)
        before it exits on SIGTERM, which would slow every model swap."""
        host, port, _ = _split(base_url)
        for conn in self._idle.pop((host, port), []):
            conn.close()

    async def aclose(self) -> None:
        self._closed = True
        for conns in self._idle.values():
            for c in conns:
                c.close()
        self._idle.clear()


def _expire(head: asyncio.Future[None], timeout: float) -> None:
    if not head.done():
        head.set_exception(UpstreamTimeout(f"no answer from upstream within {timeout:g} s"))


# Characters a request target may carry as they are; anything else (spaces, controls, non-ASCII,
# quotes, backslashes) is percent-encoded so it can neither break the request line nor the encoding.
_TARGET_SAFE = "/?&=%:@!$'()*+,;~[]#"
_PLAIN_TARGET = re.compile(r"[A-Za-z0-9/?&=%:@!$'()*+,;~\[\]#._-]*").fullmatch
_PATH_SAFE = "/:@!$&'()*+,;=~"


def upstream_path(path: str) -> str:
    """``/`` + a decoded path from the client, encoded again for the request line upstream
    (``%`` and ``?`` included, so a decoded ``%3F`` stays part of the path)."""
    return "/" + quote(path.removeprefix("/"), safe=_PATH_SAFE)
