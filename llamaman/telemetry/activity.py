"""The activity log: one RequestLog row per proxied request.

The relay calls ``observe`` as each request ends, on the request path, so it only appends to a
queue. A background task turns the queue into metrics and rows, writes rows in batches (one
transaction per burst), charges them their GPU energy once it is known, and prunes the table to
the newest ``activity_retention`` rows.

While the database is away (restarting, unreachable) rows wait in memory, up to ``MAX_UNWRITTEN``,
and are written when it answers again. A write that failed may still have been committed (the
answer to the commit was what got lost), so the rows of a failed write are matched against the
table before they are written again: none is lost, none is written twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sqlmodel import col, delete, insert, select, update

from llamaman.core.db import Database, is_unreachable
from llamaman.core.exchange import Exchange
from llamaman.core.identity import Identity, current_identity
from llamaman.core.runtime import RuntimeConfig
from llamaman.core.tables import RequestLog
from llamaman.core.tasks import at_once, wait_event
from llamaman.telemetry.activity_query import ERROR_CHARS, model_label
from llamaman.telemetry.energy import EnergyAttributor, Span

log = logging.getLogger(__name__)

# Requests waiting for the writer; beyond this (writer stuck or never started) the oldest are dropped.
MAX_QUEUED = 100_000
# Rows waiting for the database to come back; beyond this the oldest are dropped, and counted.
MAX_UNWRITTEN = 100_000


@dataclass(slots=True)
class Finished:
    """A finished request, as logged and measured."""

    ts: float  # wall-clock start
    model: str
    endpoint: str
    key_name: str | None
    status: int
    prompt_tokens: int
    completion_tokens: int
    ttft_ms: float | None
    duration_ms: float
    tokens_per_s: float | None
    start: float  # monotonic
    end: float  # monotonic
    error: str | None = None
    load_ms: float | None = None  # the cold start this request waited through, if any
    node: str | None = None  # the node that answered (several boxes); None on a standalone box

    def values(self) -> dict[str, Any]:
        """The row's columns, for a bulk insert."""
        return {
            "ts": self.ts,
            "model": model_label(self.model)[:255],
            "endpoint": self.endpoint[:255],
            "key_name": self.key_name,
            "status": self.status,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "ttft_ms": _round(self.ttft_ms),
            "duration_ms": round(self.duration_ms, 3),
            "tokens_per_s": _round(self.tokens_per_s),
            "error": self.error[:ERROR_CHARS] if self.error else None,
            "load_ms": _round(self.load_ms),
            "node": self.node,
        }

    def same_row(self) -> tuple[float, str, str | None, int]:
        """What tells this request's row apart in the table (``ts`` is exact to the microsecond)."""
        return (self.ts, self.endpoint[:255], self.key_name, self.status)

    def row(self) -> RequestLog:
        return RequestLog(**self.values())


def _round(v: float | None) -> float | None:
    return round(v, 3) if v is not None else None


def key_name_of(identity: Identity | None) -> str | None:
    """The name logged for who made a request: the API key's name, or "user:NAME" for a session."""
    if not isinstance(identity, Identity):
        return None
    return identity.name if identity.kind == "key" else f"user:{identity.name}"


def finished_from(
    ex: Exchange, identity: Identity | None, wall_offset: float, node: str | None = None
) -> Finished:
    end = ex.finished or time.monotonic()
    duration = max(0.0, end - ex.started)
    ttft = ex.ttft_ms
    # Streams: generation runs from the first byte to the end. Whole answers arrive at once, so
    # their first byte is their last and only the full duration says anything.
    gen = end - ex.first_byte if ex.stream and ex.first_byte and end > ex.first_byte else duration
    tps = ex.completion_tokens / gen if ex.completion_tokens and gen > 0 else None
    return Finished(
        ts=ex.started + wall_offset,
        model=ex.model,
        endpoint=ex.endpoint,
        key_name=key_name_of(identity),
        status=ex.status,
        prompt_tokens=ex.prompt_tokens,
        completion_tokens=ex.completion_tokens,
        ttft_ms=ttft,
        duration_ms=duration * 1000,
        tokens_per_s=tps,
        start=ex.started,
        end=end,
        error=ex.error,
        load_ms=ex.load_ms,
        node=ex.node or node,
    )


class ActivityLog:
    def __init__(
        self,
        db: Database,
        runtime: RuntimeConfig,
        *,
        on_record: Callable[[Finished], None] | None = None,
        energy: EnergyAttributor | None = None,
        energy_enabled: Callable[[], bool] = lambda: False,
        idle: Callable[[], bool] = lambda: True,
        wait_idle: Callable[[float], Awaitable[None]] = at_once,
        batch_delay: float = 0.25,
        max_defer: float = 2.0,
        prune_every_s: float = 30.0,
        node: str | None = None,
    ) -> None:
        self.db = db
        self.node = node  # written on the rows of the requests this box answered itself
        self.runtime = runtime
        self.on_record = on_record
        self.energy = energy
        self.energy_enabled = energy_enabled
        self.idle = idle
        # Writes wait, at most ``max_defer`` seconds, for no request to be in flight: their CPU time
        # (the insert, and the thread's hold on the interpreter) would come out of the answers.
        self.wait_idle = wait_idle
        self.batch_delay = batch_delay
        self.max_defer = max_defer
        self.prune_every_s = prune_every_s
        self._queue: deque[tuple[Exchange, Identity | None]] = deque(maxlen=MAX_QUEUED)
        self._unwritten: deque[Finished] = deque()
        # How many of the first ``_unwritten`` rows were in a write that failed (may be in the table).
        self._doubtful = 0
        self.dropped = 0  # rows given up while the database was away and the buffer full
        self.db_error: str | None = None  # why the last write failed; None once one succeeds
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._write_lock = asyncio.Lock()
        self._last_prune = 0.0
        self.written = 0
        # ``written`` when the table was last pruned (-1: never): nothing new, nothing to prune.
        self._pruned_at = -1

    # ---- hot path ----------------------------------------------------------------------------
    def observe(self, ex: Exchange) -> None:
        """The relay's observer: just a queue append.

        Who made the request comes from the auth layer: an ``identity`` the surface put on the
        exchange, else the request context's identity (``llamaman.core.identity``), which is still set
        when the relay calls this at the end of a stream.
        """
        self._queue.append((ex, getattr(ex, "identity", None) or current_identity()))
        self._wake.set()

    # ---- background --------------------------------------------------------------------------
    def pump(self) -> list[Finished]:
        """Move queued requests into the metrics and the write buffer (synchronous, cheap)."""
        if not self._queue:
            return []
        offset = time.time() - time.monotonic()
        out = []
        while self._queue:
            ex, identity = self._queue.popleft()
            f = finished_from(ex, identity, offset, self.node)
            if self.on_record is not None:
                try:
                    self.on_record(f)
                except Exception:
                    log.exception("recording request metrics failed")
            out.append(f)
        self._unwritten.extend(out)
        return out

    def _bound(self) -> None:
        # Only under the write lock: a write in flight owns the first rows.
        over = len(self._unwritten) - MAX_UNWRITTEN
        if over <= 0:
            return
        for _ in range(over):
            self._unwritten.popleft()
        self._doubtful = max(0, self._doubtful - over)
        self.dropped += over
        log.warning(
            "activity log: the database has been away too long; dropped the %d oldest rows (%d in all)",
            over,
            self.dropped,
        )

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="activity-log")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(Exception):
            await self.flush(settle_all=True)

    async def _loop(self) -> None:
        while True:
            await wait_event(self._wake, self.seconds_to_next_round())
            if self._wake.is_set():
                # Let a burst of requests accumulate into one transaction.
                await asyncio.sleep(self.batch_delay)
                self._wake.clear()
                self.pump()  # the metrics count the requests now; only the write waits
                await self.wait_idle(self.max_defer)
            try:
                await self.flush()
                grown = self.written != self._pruned_at
                if grown and time.monotonic() - self._last_prune >= self.prune_every_s:
                    await self.prune()
            except Exception as exc:
                if not is_unreachable(exc):  # the database away was reported once, by flush
                    log.exception("writing the activity log failed")
                await asyncio.sleep(1.0)

    def seconds_to_next_round(self) -> float | None:
        """Seconds until the writer has work of its own: energy to charge (every 2 s) or rows to prune.
        None when there is none, so an idle process has nothing here on a timer."""
        due: float | None = 2.0 if self.energy is not None and self.energy.pending else None
        if self.written != self._pruned_at:
            prune_in = max(0.0, self._last_prune + self.prune_every_s - time.monotonic())
            due = prune_in if due is None else min(due, prune_in)
        return due

    async def flush(self, *, settle_all: bool = False) -> int:
        """Write every queued request now; charge energy to the rows that can be settled."""
        async with self._write_lock:
            self.pump()
            self._bound()
            batch = list(self._unwritten)
            if batch:
                charging = self.energy is not None and self.energy_enabled()
                try:
                    ids = await asyncio.to_thread(self._insert_once, batch, self._doubtful, charging)
                except Exception as exc:
                    if not is_unreachable(exc):
                        self._unwritten.clear()  # a write the database refuses: retrying cannot help
                        self._doubtful = 0
                        raise
                    if self.db_error is None:
                        log.warning("activity log: database away, keeping rows until it is back: %s", exc)
                    self.db_error = str(exc)
                    self._doubtful = len(batch)
                    raise
                for _ in batch:
                    self._unwritten.popleft()
                self._doubtful = 0
                if self.db_error is not None:
                    log.info("activity log: database back; wrote %d waiting rows", len(batch))
                    self.db_error = None
                self.written += len(batch)
                if charging and self.energy is not None:
                    for f, row_id in zip(batch, ids, strict=True):
                        if row_id is not None:
                            self.energy.add(Span(row_id, f.start, f.end))
            await self._settle_energy(force=settle_all)
            return len(batch)

    async def _settle_energy(self, force: bool) -> None:
        if self.energy is None or not self.energy.pending:
            return
        if not self.energy_enabled():
            self.energy.discard_pending()
            return
        # Read after the queue was drained: no request has ended unseen, so "idle" is exact.
        idle = force or (not self._queue and self.idle())
        charged = self.energy.settle(time.monotonic(), idle)
        if charged:
            await asyncio.to_thread(self._set_energy, charged)

    def _insert_once(self, batch: list[Finished], doubtful: int, with_ids: bool) -> list[int | None]:
        """Insert ``batch``, leaving out those of its first ``doubtful`` rows already in the table;
        a row left out gets no id (its energy, if any, is not charged twice either)."""
        if not doubtful:
            return self._insert(batch, with_ids)
        suspects = batch[:doubtful]
        with self.db.session() as s:
            found = s.exec(
                select(RequestLog.ts, RequestLog.endpoint, RequestLog.key_name, RequestLog.status)
                .where(col(RequestLog.ts) >= min(f.ts for f in suspects))
                .where(col(RequestLog.ts) <= max(f.ts for f in suspects))
            ).all()
        present = {tuple(r) for r in found}
        keep = [i for i, f in enumerate(batch) if i >= doubtful or f.same_row() not in present]
        if len(keep) < len(batch):
            log.info("activity log: %d row(s) of the failed write were in the table", len(batch) - len(keep))
        ids: list[int | None] = [None] * len(batch)
        if keep:
            for i, row_id in zip(keep, self._insert([batch[i] for i in keep], with_ids), strict=True):
                ids[i] = row_id
        return ids

    def _insert(self, batch: list[Finished], with_ids: bool = True) -> list[int | None]:
        """Write the rows; their ids only when energy will be charged to them. Without ids it is one
        bulk insert, a fraction of the ORM's cost per row (it runs in a thread, but holds the GIL the
        event loop serving requests needs)."""
        if not with_ids:
            with self.db.session() as s:
                s.connection().execute(insert(RequestLog), [f.values() for f in batch])
                s.commit()
            return [None] * len(batch)
        rows = [f.row() for f in batch]
        with self.db.session() as s:
            s.add_all(rows)
            s.commit()
            return [r.id for r in rows]

    def _set_energy(self, charged: dict[int, float]) -> None:
        with self.db.session() as s:
            for row_id, joules in charged.items():
                s.exec(
                    update(RequestLog).where(col(RequestLog.id) == row_id).values(energy_j=round(joules, 4))
                )
            s.commit()

    async def prune(self) -> int:
        """Keep the newest ``activity_retention`` rows; returns how many were deleted."""
        self._last_prune = time.monotonic()
        self._pruned_at = self.written
        return await asyncio.to_thread(self._prune, self.runtime.current.activity_retention)

    def _prune(self, keep: int) -> int:
        with self.db.session() as s:
            cutoff = s.exec(
                select(RequestLog.id).order_by(col(RequestLog.id).desc()).offset(keep).limit(1)
            ).first()
            if cutoff is None:
                return 0
            result = s.exec(delete(RequestLog).where(col(RequestLog.id) <= cutoff))
            s.commit()
            return int(getattr(result, "rowcount", 0) or 0)
