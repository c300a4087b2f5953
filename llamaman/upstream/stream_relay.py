"""A pass-through stream relayed to its client: read as blocks by the ASGI server's task
(``relay_stream``), or spliced, each block written from the upstream connection's own callback
(``splice_stream``, for a server that writes to the client's transport itself). Either way nothing is
parsed per block: the tally counts events as they pass and reads the accounting from llama-server's
final event once the stream ends."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from llamaman.core.exchange import Exchange
from llamaman.upstream.answers import ErrorStyle, stream_error_line
from llamaman.upstream.inflight import CLIENT_LEFT
from llamaman.upstream.target import UpstreamTarget
from llamaman.upstream.wire import UpstreamError, UpstreamResponse

try:
    from orjson import loads as _loads
except ImportError:  # pragma: no cover - orjson comes with NiceGUI
    _loads = json.loads

log = logging.getLogger(__name__)

# How much of a stream's end is kept for the final accounting: llama-server's last event, with usage
# and timings, is about 1 KB, so this holds it whole however the blocks were cut.
_TAIL_BYTES = 16384
# The fields of a final event that carry token counts: OpenAI's, llama-server's, Ollama's.
_ACCOUNTED = (b"usage", b"timings", b"eval_count")

Record = Callable[[Exchange], None]


class Tally:
    """A stream's accounting as its blocks pass: the first byte's time, the events so far, and the
    last blocks, kept by reference, for the final event's usage and timings."""

    __slots__ = ("ex", "kept", "recent")

    def __init__(self, ex: Exchange) -> None:
        self.ex = ex
        self.recent: list[bytes] = []
        self.kept = 0

    def see(self, chunk: bytes) -> None:
        ex, recent = self.ex, self.recent
        if ex.first_byte is None:
            ex.first_byte = time.monotonic()
        ex.progress_tokens += chunk.count(b"data: ")
        recent.append(chunk)
        self.kept += len(chunk)
        while self.kept - len(recent[0]) >= _TAIL_BYTES:
            self.kept -= len(recent.pop(0))

    def close(self) -> None:
        absorb_sse_tail(self.ex, b"".join(self.recent))


def _broke(exc: UpstreamError, lease: UpstreamTarget, style: ErrorStyle, ex: Exchange) -> bytes:
    ex.error = f"upstream stream broke: {exc.__class__.__name__}"
    log.warning("stream from %s broke: %r", lease.model_name, exc)
    where = f"node '{lease.node}'" if lease.node else "llama-server"
    return stream_error_line(style, f"{where} for '{lease.model_name}' stopped mid-stream ({ex.error})")


def _cancelled_line(style: ErrorStyle, ex: Exchange) -> bytes | None:
    """The line that tells the client its stream was cancelled (not by its own leaving)."""
    if ex.cancelled is not None and ex.cancelled != CLIENT_LEFT:
        ex.error = ex.cancelled
        return stream_error_line(style, ex.cancelled)
    return None


def _end(upstream: UpstreamResponse, lease: UpstreamTarget, tally: Tally, record: Record) -> None:
    """However a stream ended: the upstream request and the lease given up, the accounting read
    from its end, the exchange recorded."""
    upstream.close()
    lease.release()
    tally.close()
    record(tally.ex)


async def relay_stream(
    upstream: UpstreamResponse, lease: UpstreamTarget, style: ErrorStyle, ex: Exchange, record: Record
) -> AsyncIterator[bytes]:
    """The stream's blocks for the ASGI server to send; the lease and the upstream request end, and
    the exchange is recorded, however it ends."""
    tally = Tally(ex)
    try:
        async for chunk in upstream.aiter_raw(paced=True):
            tally.see(chunk)
            yield chunk
        line = _cancelled_line(style, ex)
        if line is not None:
            yield line
    except UpstreamError as exc:
        yield _broke(exc, lease, style, ex)
    finally:
        _end(upstream, lease, tally, record)


async def splice_stream(
    upstream: UpstreamResponse,
    lease: UpstreamTarget,
    style: ErrorStyle,
    ex: Exchange,
    record: Record,
    sink: Callable[[bytes], bool],
    drained: Callable[[], Awaitable[object]],
) -> None:
    """The stream passed to ``sink`` from the upstream connection's callback as it arrives
    (``UpstreamResponse.splice``), with the same accounting, error lines and ending as
    ``relay_stream``. ``sink`` answers whether the client may take more; ``drained`` waits until it
    may."""
    tally = Tally(ex)

    def pass_on(chunk: bytes) -> bool:
        tally.see(chunk)
        return sink(chunk)

    try:
        await upstream.splice(pass_on, drained)
        line = _cancelled_line(style, ex)
        if line is not None:
            sink(line)
    except UpstreamError as exc:
        sink(_broke(exc, lease, style, ex))
    finally:
        _end(upstream, lease, tally, record)


def absorb_sse_tail(ex: Exchange, tail: bytes) -> None:
    """Usage and timings from the last event of a stream's end that carries them."""
    for line in reversed(tail.split(b"\n")):
        line = line.strip()
        if line.startswith(b"data:"):
            line = line[5:].strip()
        if not line.startswith(b"{") or not any(k in line for k in _ACCOUNTED):
            continue
        try:
            obj = _loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict):
            ex.absorb_usage(obj)
            return
