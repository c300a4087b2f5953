"""The pass-through's HTTP/1.1 client: pooled keep-alive connections to llama-servers on loopback.

httpx costs about 1 ms of CPU per request under uvloop (anyio, httpcore and h11 layers); this
client writes each request in one ``write`` and parses the answer with httptools (uvicorn's own
parser), about 50 µs. It only does what the relay needs: one request per connection at a time,
``Content-Length`` or chunked answers, the body relayed as it arrives with back-pressure, a read
timeout, and ``abort`` to drop a request whose client left (llama-server then frees its slot); the
connection and its answer are ``wire``'s.

Given a server's ``connections`` (how many it reads at once), requests beyond them wait here, in
order, and each takes over a connection the one before it finished with. llama-server serves each
connection on one of a few HTTP threads; a connection beyond them would only wait in its accept
queue, and every fresh one costs a connect and a close on both sides: in a burst of sixteen that
was most of LlamaMan's CPU per request.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import re
import time
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import httptools

from llamaman.upstream.wire import (
    Connection,
    UpstreamClosed,
    UpstreamError,
    UpstreamResponse,
    UpstreamTimeout,
)


@functools.lru_cache(maxsize=1024)
def _split(base_url: str) -> tuple[str, int, bytes]:
    u = urlsplit(base_url)
    if u.scheme != "http" or not u.hostname:
        raise UpstreamError(f"unsupported upstream URL {base_url!r}")
    port = u.port or 80
    return u.hostname, port, f"{u.hostname}:{port}".encode()


def encode_headers(headers: Mapping[str, str] | Iterable[tuple[bytes, bytes]] | bytes | None) -> bytes:
    """Header lines as written in a request (``bytes``: lines already made by this function)."""
    if not headers:
        return b""
    if isinstance(headers, bytes):
        return headers
    if isinstance(headers, Mapping):
        return b"".join(f"{k}: {v}\r\n".encode("latin-1") for k, v in headers.items())
    return b"".join([k + b": " + v + b"\r\n" for k, v in headers])


class UpstreamClient:
    """Keep-alive connections per (host, port), most recently used first."""

    def __init__(self, connect_timeout: float = 5.0, max_idle: int = 256, idle_expiry: float = 30.0) -> None:
        self.connect_timeout = connect_timeout
        self.max_idle = max_idle
        self.idle_expiry = idle_expiry
        self._idle: dict[tuple[str, int], list[Connection]] = {}
        # Requests per (host, port) still waiting for their answer's head.
        self._waiting: dict[tuple[str, int], int] = {}
        # Where the caller gave the server's ``connections``: requests holding one, and those in line.
        self._busy: dict[tuple[str, int], int] = {}
        self._turns: dict[tuple[str, int], collections.deque[asyncio.Future[None]]] = {}
        self._closed = False

    def put_back(self, conn: Connection) -> None:
        """A connection whose answer was read to its end: kept for the next request, or closed."""
        idle = self._idle.setdefault(conn.key, [])
        # llama-server serves each connection on one of a few HTTP threads for as long as it is kept
        # alive (5 s idle): a kept connection while other requests wait could leave them queued
        # behind it for those 5 s. Close it so a waiting connection gets the thread; unless the
        # requests keep to the server's connections, and the next in line takes this one over.
        waiting = self._waiting.get(conn.key) and conn.key not in self._turns
        if self._closed or len(idle) >= self.max_idle or waiting:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        idle.append(conn)

    def _take(self, key: tuple[str, int]) -> Connection | None:
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if conn.lost or now - conn.idle_since > self.idle_expiry:
                conn.close()
                continue
            return conn
        return None

    async def _connect(self, key: tuple[str, int]) -> Connection:
        loop = asyncio.get_running_loop()
        try:
            # Not ``wait_for``: on Python 3.11 it returns the connection, swallowing the cancel, when
            # the request is cancelled (an administrator's cancel) just as the connection is made.
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(lambda: Connection(self, key), key[0], key[1])
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
        connections: int | None = None,
    ) -> UpstreamResponse:
        """Send a request and return once the answer's status and headers are in. ``authorization``
        is the value of an ``Authorization`` header (the server's own key), added as is. Given
        ``connections``, the request waits its turn while that many requests to the server hold one
        (``timeout`` counts from the request's write, as llama-server's own queue has no limit)."""
        key, data = _encode(method, base_url, target, headers, content, params, authorization)
        if not connections:
            return await self._exchange(key, data, timeout, method == "HEAD")
        await self._turn(key, connections)
        try:
            response = await self._exchange(key, data, timeout, method == "HEAD")
        except BaseException:
            self._next_turn(key)
            raise
        response._end_turn = functools.partial(self._next_turn, key)
        return response

    def send_now(
        self,
        base_url: str,
        target: str,
        *,
        headers: Iterable[tuple[bytes, bytes]] | bytes | None,
        content: bytes,
        timeout: float = 300.0,
        authorization: bytes | None = None,
        connections: int | None = None,
    ) -> Pending | None:
        """A POST written at once, from a plain callback, where a kept connection is idle and the
        server has a turn free with nobody in line; its answer's head is awaited later with
        ``Pending.head``, so the write waits for no turn of the loop. None: use ``request``."""
        key, data = _encode("POST", base_url, target, headers, content, None, authorization)
        if connections and (self._busy.get(key, 0) >= connections or self._turns.get(key)):
            return None
        conn = self._take(key)
        if conn is None:
            return None
        try:
            started = self._start(conn, data, timeout, False)
        except UpstreamClosed:
            return None  # closed by the server while it was idle: ``request`` connects afresh
        if connections:
            self._turns.setdefault(key, collections.deque())
            self._busy[key] = self._busy.get(key, 0) + 1
        return Pending(self, conn, data, timeout, started, bool(connections))

    async def _turn(self, key: tuple[str, int], connections: int) -> None:
        """Wait, in order, until fewer than ``connections`` requests to the server hold one."""
        turns = self._turns.setdefault(key, collections.deque())
        busy = self._busy.get(key, 0)
        if busy < connections and not turns:
            self._busy[key] = busy + 1
            return
        turn = asyncio.get_running_loop().create_future()
        turns.append(turn)
        try:
            await turn
        except BaseException:
            if turn.done() and not turn.cancelled():
                self._next_turn(key)  # handed the turn just as it gave up: pass it on
            else:
                turns.remove(turn)
            raise

    def _next_turn(self, key: tuple[str, int]) -> None:
        """A request is done with its connection: the next in line takes its turn (and, kept alive,
        its connection), or there is one request fewer."""
        turns = self._turns.get(key)
        while turns:
            turn = turns.popleft()
            if not turn.done():
                turn.set_result(None)
                return
        self._busy[key] -= 1

    async def _exchange(
        self, key: tuple[str, int], data: bytes, timeout: float, head_only: bool
    ) -> UpstreamResponse:
        conn = self._take(key)
        reused = conn is not None
        for _attempt in range(2):
            if conn is None:
                conn = await self._connect(key)
            try:
                return await self._send(conn, data, timeout, head_only)
            except UpstreamClosed:
                # A kept-alive connection the server closed as we reused it: nothing was answered,
                # so one retry on a fresh connection is safe.
                if not reused or conn.got_data:
                    raise
                conn, reused = None, False
        raise UpstreamClosed("upstream closed the connection")  # pragma: no cover - loop returns or raises

    async def _send(self, conn: Connection, data: bytes, timeout: float, head_only: bool) -> UpstreamResponse:
        return await self._head(conn, *self._start(conn, data, timeout, head_only))

    def _start(
        self, conn: Connection, data: bytes, timeout: float, head_only: bool
    ) -> tuple[UpstreamResponse, asyncio.Future[None], asyncio.TimerHandle]:
        """Write the request; the answer's head is ``_head``'s to wait for."""
        assert conn.transport is not None
        conn.got_data = False  # nothing of this answer yet: a connection found closed may be retried
        if conn.lost or conn.transport.is_closing():
            conn.done(False)
            raise UpstreamClosed("upstream closed the connection")
        # Written first: the server works on it while the rest is set up. Nothing it answers is read
        # before this callback returns to the loop.
        conn.transport.write(data)
        loop = asyncio.get_running_loop()
        response = UpstreamResponse(conn, timeout, loop)
        conn.response = response
        conn.head_only = head_only
        conn.head = head = loop.create_future()
        conn.parser = httptools.HttpResponseParser(conn)
        timer = loop.call_later(timeout, _expire, head, timeout)
        key = conn.key
        self._waiting[key] = self._waiting.get(key, 0) + 1
        return response, head, timer

    async def _head(
        self,
        conn: Connection,
        response: UpstreamResponse,
        head: asyncio.Future[None],
        timer: asyncio.TimerHandle,
    ) -> UpstreamResponse:
        key = conn.key
        try:
            await head
        except BaseException:
            conn.done(False)
            raise
        finally:
            timer.cancel()
            self._waiting[key] -= 1
        return response

    def waiting(self, base_url: str) -> int:
        """Requests written to the server whose answer's head nobody has had yet (nor given up on)."""
        host, port, _ = _split(base_url)
        return self._waiting.get((host, port), 0)

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


class Pending:
    """A request ``send_now`` wrote on a kept connection; its answer's head is still to come."""

    def __init__(
        self,
        client: UpstreamClient,
        conn: Connection,
        data: bytes,
        timeout: float,
        started: tuple[UpstreamResponse, asyncio.Future[None], asyncio.TimerHandle],
        turn: bool,
    ) -> None:
        self._client, self._conn, self._data, self._timeout = client, conn, data, timeout
        self._started = started
        self._turn = turn
        self._waited = False

    @property
    def response(self) -> UpstreamResponse:
        """The answer as it arrives; ``head`` may give a fresh one instead (the connection was closed
        as it was reused, and the request sent again)."""
        return self._started[0]

    async def head(self) -> UpstreamResponse:
        """The answer with its status and headers in, as ``UpstreamClient.request`` returns it."""
        self._waited = True
        client, conn = self._client, self._conn
        try:
            try:
                response = await client._head(conn, *self._started)
            except UpstreamClosed:
                # The server closed the kept connection as it was reused: nothing was answered, so
                # once more on a fresh one (as ``request`` does).
                if conn.got_data:
                    raise
                response = await client._exchange(conn.key, self._data, self._timeout, False)
        except BaseException:
            self._end_turn()
            raise
        if self._turn:
            response._end_turn = self._end_turn
        return response

    def abort(self) -> None:
        """The request is given up before anyone waited for its answer: the connection closes (so
        llama-server drops it) and the turn passes on. Once ``head`` is awaited, its caller's
        cancel does this."""
        if self._waited:
            return
        self._waited = True
        _, head, timer = self._started
        timer.cancel()
        head.cancel()
        self._client._waiting[self._conn.key] -= 1
        self._conn.done(False)
        self._end_turn()

    def _end_turn(self) -> None:
        if self._turn:
            self._turn = False
            self._client._next_turn(self._conn.key)


def _encode(
    method: str,
    base_url: str,
    target: str,
    headers: Mapping[str, str] | Iterable[tuple[bytes, bytes]] | bytes | None,
    content: bytes | None,
    params: Any,
    authorization: bytes | None,
) -> tuple[tuple[str, int], bytes]:
    """The server's (host, port) and the request as written, in one piece."""
    host, port, host_header = _split(base_url)
    if params:
        target += ("&" if "?" in target else "?") + urlencode(params)
    head = _request_head(method, target, host_header) + encode_headers(headers)
    if authorization:
        head += b"Authorization: " + authorization + b"\r\n"
    if content is not None or method in ("POST", "PUT", "PATCH"):
        head += b"Content-Length: %d\r\n" % len(content or b"")
    return (host, port), head + b"\r\n" + (content or b"")


@functools.lru_cache(maxsize=1024)  # the same few routes to the same few servers, over and over
def _request_head(method: str, target: str, host_header: bytes) -> bytes:
    """The request line and the Host line."""
    if not _PLAIN_TARGET(target):
        target = quote(target, safe=_TARGET_SAFE)
    return b"%s %s HTTP/1.1\r\nHost: %s\r\n" % (method.encode(), target.encode("latin-1"), host_header)


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
