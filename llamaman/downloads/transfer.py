"""Moving bytes: speed limits, speed measurement, and streaming one file into its ``.part`` file.

A download resumes from whatever its ``.part`` file already holds (an HTTP Range request), so the
part file is only ever appended to in order: its size is always a valid resume offset.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx

from llamaman.downloads.hub import (
    DownloadForbidden,
    DownloadNotFound,
    DownloadStorageFull,
    DownloadUpstreamFailed,
    TransientError,
)

T = TypeVar("T")
_FLUSH_BYTES = 256 * 1024
_HASH_BLOCK = 4 * 1024 * 1024


def mbps_to_bytes(mbps: float) -> float:
    return mbps * 1_000_000 / 8


class TokenBucket:
    """A byte-rate limit shared by whoever calls ``take``.

    Takers may overdraw and then sleep the debt off, which keeps the average exact even when chunks
    are larger than the bucket. The lock makes concurrent takers queue in turn, so two downloads under
    one global limit share it fairly. ``rate`` is read on every call: a changed setting applies at once.
    """

    def __init__(self, rate: Callable[[], float], burst_seconds: float = 0.2) -> None:
        self.rate = rate
        self.burst_seconds = burst_seconds
        self.tokens = 0.0
        self.stamp = time.monotonic()
        self._lock = asyncio.Lock()

    async def take(self, n: int) -> None:
        rate = self.rate()
        if rate <= 0:
            self.tokens, self.stamp = 0.0, time.monotonic()
            return
        async with self._lock:
            now = time.monotonic()
            cap = max(rate * self.burst_seconds, 128 * 1024)
            self.tokens = min(cap, self.tokens + (now - self.stamp) * rate)
            self.stamp = now
            self.tokens -= n
            if self.tokens < 0:
                await asyncio.sleep(-self.tokens / rate)


class SpeedMeter:
    """Bytes per second over the last few seconds (a sliding window, so stalls show at once)."""

    def __init__(self, window: float = 3.0) -> None:
        self.window = window
        self.samples: deque[tuple[float, int]] = deque()
        self.started = time.monotonic()

    def add(self, n: int) -> None:
        now = time.monotonic()
        self.samples.append((now, n))
        self._trim(now)

    def _trim(self, now: float) -> None:
        while self.samples and now - self.samples[0][0] > self.window:
            self.samples.popleft()

    def rate(self) -> float:
        now = time.monotonic()
        self._trim(now)
        if not self.samples:
            return 0.0
        span = max(min(self.window, now - self.started), 0.25)
        return sum(n for _, n in self.samples) / span

    def reset(self) -> None:
        self.samples.clear()
        self.started = time.monotonic()


async def run_blocking(fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn`` in a thread; on cancellation still wait for it, so no write outlives its file."""
    fut = asyncio.get_running_loop().run_in_executor(None, fn, *args)
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        await asyncio.wait([fut])
        raise


def _hash_prefix(path: Path, length: int) -> Any:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        left = length
        while left > 0:
            block = fh.read(min(_HASH_BLOCK, left))
            if not block:
                break
            h.update(block)
            left -= len(block)
    return h


def _write(fd: int, hasher: Any, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
    hasher.update(data)


def _open_part(path: Path, truncate: bool) -> int:
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | (os.O_TRUNC if truncate else 0)
    return os.open(path, flags, 0o644)


def _classify(status: int, url: str) -> Exception:
    host = httpx.URL(url).host
    if status == 429 or status >= 500:
        return TransientError(f"HTTP {status} from {host}")
    if status in (401, 403):
        return DownloadForbidden(f"access denied by {host} (HTTP {status}): check the Hugging Face token")
    if status == 404:
        return DownloadNotFound(f"file not found on {host} (HTTP 404)")
    return DownloadUpstreamFailed(f"{host} refused the download (HTTP {status})")


async def stream_to_part(
    client: httpx.AsyncClient,
    url: str,
    headers: dict[str, str],
    part: Path,
    size: int | None,
    throttle: Callable[[int], Awaitable[None]],
    progress: Callable[[int, int], None],
) -> str:
    """Append the rest of ``url`` to ``part`` and return the complete file's sha256.

    ``progress(done, new_bytes)`` is called as bytes arrive. Raises TransientError for what a retry
    may fix (the part file keeps everything written so far) and DownloadError for the rest.
    """
    part.parent.mkdir(parents=True, exist_ok=True)
    offset = part.stat().st_size if part.exists() else 0
    if size is not None and offset > size:
        offset = 0  # longer than the file can be: not ours to trust
        part.unlink()
    hasher = await run_blocking(_hash_prefix, part, offset) if offset else hashlib.sha256()
    progress(offset, 0)
    if size is not None and offset == size:
        return str(hasher.hexdigest())
    req_headers = {**headers, "Accept-Encoding": "identity"}
    if offset:
        req_headers["Range"] = f"bytes={offset}-"
    done = offset
    try:
        async with client.stream("GET", url, headers=req_headers, follow_redirects=True) as r:
            if r.status_code == 416:
                part.unlink(missing_ok=True)
                raise TransientError("the server refused to resume from the bytes on disk; starting over")
            if r.status_code >= 400:
                raise _classify(r.status_code, str(r.url))
            if offset and r.status_code != 206:
                # The server ignored Range and sends the whole file: start the part file over.
                offset = done = 0
                hasher = hashlib.sha256()
                progress(0, 0)
            elif offset and not r.headers.get("content-range", "").startswith(f"bytes {offset}-"):
                where = r.headers.get("content-range")
                raise TransientError(f"the server resumed at the wrong place ({where})")
            fd = _open_part(part, truncate=offset == 0)
            buf = bytearray()
            try:
                async for chunk in r.aiter_raw():
                    buf += chunk
                    progress(done + len(buf), len(chunk))
                    if len(buf) >= _FLUSH_BYTES:
                        await run_blocking(_write, fd, hasher, bytes(buf))
                        done += len(buf)
                        buf.clear()
                    await throttle(len(chunk))
            except httpx.TransportError:
                # What arrived before the connection broke is good: keep it so the retry resumes after it.
                if buf:
                    await run_blocking(_write, fd, hasher, bytes(buf))
                    done += len(buf)
                raise
            else:
                if buf:
                    await run_blocking(_write, fd, hasher, bytes(buf))
                    done += len(buf)
            finally:
                os.close(fd)
    except httpx.TransportError as exc:
        raise TransientError(f"connection lost: {exc or type(exc).__name__}") from exc
    except OSError as exc:
        raise DownloadStorageFull(f"cannot write {part.name}: {exc.strerror or exc}") from exc
    if size is not None and done != size:
        raise TransientError(f"the connection ended after {done} of {size} bytes")
    return str(hasher.hexdigest())
