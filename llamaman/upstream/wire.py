"""One keep-alive connection to a llama-server (an asyncio protocol feeding httptools) and the answer
read from it: its status and headers, then its body as it arrives, with back-pressure, a read timeout
and ``abort``. The pool that hands connections out is ``client``'s."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

import httptools

from llamaman.core.errors import UpstreamFailed
from llamaman.upstream.pacing import PACER

# Pause reading from llama-server while this much of its answer waits for a slow client.
_HIGH_WATER = 256 * 1024


class Pool(Protocol):
    """Where a connection goes back once its answer is read (``client.UpstreamClient``)."""

    def put_back(self, conn: Connection) -> None: ...


class UpstreamError(UpstreamFailed):
    """The upstream request failed: refused, reset, timed out or answered with garbage."""


class UpstreamTimeout(UpstreamError):
    pass


class UpstreamClosed(UpstreamError):
    """The server closed the connection before the answer was complete."""


class UpstreamResponse:
    """An answer whose body is read as it arrives; ``close`` hands the connection back when the body
    was read to its end, and closes it otherwise."""

    def __init__(self, conn: Connection, timeout: float, loop: asyncio.AbstractEventLoop) -> None:
        self._conn = conn
        self._loop = loop
        self._timeout = timeout
        self.status_code = 0
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._drained = False  # a reader took some of the body: ``_chunks`` holds only the rest
        self._waiter: asyncio.Future[None] | None = None
        self._complete = False
        self._error: BaseException | None = None
        self._aborted = False
        self._closed = False
        self._activity = loop.time()
        self._timer: asyncio.TimerHandle | None = None
        self._keep_alive = False
        self._end_turn: Callable[[], None] | None = None  # the next request's turn, where it waits for one
        # Told once the whole answer is in, from the parser's callback, before any waiter wakes.
        self.on_whole: Callable[[UpstreamResponse], None] | None = None
        # ``splice``'s: where the body goes from the connection's callback, how many blocks went,
        # and whether the client asked to wait (its writes are backed up).
        self._sink: Callable[[bytes], bool] | None = None
        self._passed = 0
        self._blocked = False

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
        if self._sink is not None:
            return  # passed on by ``_flush`` once the connection's read is parsed
        if self._buffered > _HIGH_WATER:
            self._conn.pause()
        self._wake()

    def _flush(self) -> None:
        """A spliced answer's body read so far, passed on in one block (see ``splice``)."""
        sink, chunks = self._sink, self._chunks
        if sink is None or not chunks or self._aborted:
            return
        self._chunks = []
        self._buffered = 0
        self._drained = True
        more = sink(chunks[0] if len(chunks) == 1 else b"".join(chunks))
        self._passed += 1
        if not more:
            self._conn.pause()  # until the client's side is drained: the task waits for that
            self._blocked = True
            self._wake()
        elif self._passed >= 2 and PACER.engaged and not self._complete:
            # As ``aiter_raw`` keeps to the beat: unread, the tokens gather in the socket.
            self._conn.pause()
            PACER.at_beat(self._beat)

    def _beat(self) -> None:
        if not self._closed and not self._blocked:
            self._conn.resume()

    def _finish(self, keep_alive: bool) -> None:
        self._complete = True
        self._keep_alive = keep_alive
        hook, self.on_whole = self.on_whole, None
        if hook is not None:
            hook(self)
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
                    self._drained = True
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
                if self._over():
                    return
                await self._wait()
        finally:
            if paced:
                PACER.streams -= 1

    def _over(self) -> bool:
        """Whether the body is all read, or reading it was dropped; raises the error it ended with."""
        if self._aborted:
            return True
        if self._error is not None:
            raise self._error
        return self._complete

    async def splice(self, sink: Callable[[bytes], bool], drained: Callable[[], Awaitable[object]]) -> None:
        """Pass the body on as it arrives, from the connection's own callback: ``sink`` is handed each
        read's worth (chunked framing removed), with no task step between llama-server's socket
        and the client's, and answers whether the client may take more. When it may not, reading
        stops until ``drained`` returns. Streams keep to the shared beat as in ``aiter_raw``.
        Returns once the body is passed on whole, or after ``abort``; raises the upstream error."""
        PACER.streams += 1
        self._sink = sink
        try:
            while True:
                self._flush()  # what arrived before, or with an error or the end
                if self._over():
                    return
                if self._blocked:
                    await drained()
                    self._blocked = False
                    self._conn.resume()
                    continue
                await self._wait()
        finally:
            self._sink = None
            PACER.streams -= 1

    def whole_body(self) -> bytes | None:
        """The body of an answer that is in whole, left in place for ``aread``; None until then, or
        once a reader has taken part of it (a body that came in several reads)."""
        if not self._complete or self._error is not None or self._aborted or self._drained:
            return None
        chunks = self._chunks
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def aread(self) -> bytes:
        if self._complete and self._error is None and not self._aborted:
            # A small answer is usually whole by the time its head is read: no iterator needed.
            chunks, self._chunks = self._chunks, []
            self._buffered = 0
            self._drained = True
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
        end_turn, self._end_turn = self._end_turn, None
        if end_turn is not None:
            end_turn()

    async def aclose(self) -> None:
        self.close()


class Connection(asyncio.Protocol):
    def __init__(self, pool: Pool, key: tuple[str, int]) -> None:
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
        r = self.response
        if r is not None and r._sink is not None:
            r._flush()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.response is not None and not self.response._complete:
            if self.head is not None and self.head.done() and self._ends_with_close():
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

    def _ends_with_close(self) -> bool:
        """Whether the answer's body ends when the connection does (its head is in, with neither a
        length nor chunks). Asked only then, not on every answer."""
        r = self.response
        if r is None or r.status_code == 0:  # the status is set once the head is in
            return False
        names = {k.lower() for k, _ in r.raw_headers}
        return b"content-length" not in names and b"transfer-encoding" not in names

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
            self.pool.put_back(self)
        else:
            self.close()
