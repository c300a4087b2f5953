"""Benchmarks started from the REST API: run in the background, results kept in the Benchmark table."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from sqlmodel import col, select, update

from llamaman.auth.accounts import AuthService
from llamaman.core.db import Database
from llamaman.core.tables import Benchmark
from llamaman.scheduling.router import ModelNotFound, ModelUnavailable, Router
from llamaman.telemetry.loadtest import BenchError, BenchmarkParams, run_benchmark

# Yields the base URL of a proxy to run against, listening while the context is open.
ProxyOpener = Callable[[], AbstractAsyncContextManager[str]]

log = logging.getLogger(__name__)


def benchmark_dict(b: Benchmark) -> dict[str, Any]:
    return {
        "id": b.id,
        "created_at": b.created_at,
        "model": b.model,
        "status": b.status,
        "params": b.params,
        "results": b.results,
    }


class BenchmarkRuns:
    def __init__(self, db: Database, router: Router, auth: AuthService) -> None:
        self.db = db
        self.router = router
        self.auth = auth
        # Set by whoever serves the proxy (the app): telemetry sits below the HTTP surfaces.
        self.open_proxy: ProxyOpener | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}

    async def start(self) -> None:
        await asyncio.to_thread(self._mark_interrupted)

    def _mark_interrupted(self) -> None:
        with self.db.session() as s:
            s.exec(
                update(Benchmark)
                .where(col(Benchmark.status) == "running")
                .values(status="failed", results={"error": "LlamaMan stopped during the run"})
            )
            s.commit()

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t

    # ---- runs --------------------------------------------------------------------------------
    async def submit(self, params: BenchmarkParams) -> Benchmark:
        row = Benchmark(model=params.model, params=params.model_dump(), status="running")
        await asyncio.to_thread(self._save, row)
        task = asyncio.create_task(self._run(row, params), name=f"benchmark-{row.id}")
        self._tasks[row.id] = task
        task.add_done_callback(lambda _: self._tasks.pop(row.id, None))
        return row

    async def _run(self, row: Benchmark, params: BenchmarkParams) -> None:
        try:
            async with self.target(params, name=f"benchmark {row.id}") as (url, where, key):
                row.results = {**await run_benchmark(url, params, api_key=key), "target_url": where}
            row.status = "done"
        except asyncio.CancelledError:
            row.status, row.results = "cancelled", {"error": "cancelled: LlamaMan is stopping"}
            await asyncio.shield(asyncio.to_thread(self._save, row))
            raise
        except (BenchError, ModelNotFound, ModelUnavailable, TimeoutError, OSError) as exc:
            row.status, row.results = "failed", {"error": str(exc) or exc.__class__.__name__}
        except Exception as exc:
            log.exception("benchmark %s failed", row.id)
            row.status, row.results = "failed", {"error": f"{exc.__class__.__name__}: {exc}"}
        await asyncio.to_thread(self._save, row)

    @contextlib.asynccontextmanager
    async def target(
        self, params: BenchmarkParams, *, name: str = "benchmark"
    ) -> AsyncIterator[tuple[str, str, str | None]]:
        """What to benchmark against, held ready for the run: (base URL, description, API key)."""
        if params.target == "direct":
            # The lease keeps the instance from sleeping or being evicted in the middle of the run.
            lease = await self.router.acquire(params.model)
            try:
                # Straight to the server: it answers only to its own key.
                key = lease.instance.proc.api_key
                yield lease.base_url, f"instance {lease.instance.id} ({lease.base_url})", key
            finally:
                lease.release()
            return
        async with self._key(params, name) as key:
            if self.open_proxy is None:
                raise BenchError("the proxy is not available")
            async with self.open_proxy() as url:
                yield url, f"proxy {url}", key

    @contextlib.asynccontextmanager
    async def _key(self, params: BenchmarkParams, name: str) -> AsyncIterator[str | None]:
        """A key for the run's own requests when the proxy wants one: limited to the benchmarked model,
        revoked afterwards. Its name marks the run's rows in the activity log."""
        auth = self.auth
        if not auth.require_auth:
            yield None
            return
        record, key = await auth.keys.create(name, allowed_models=[params.model])
        try:
            yield key
        finally:
            with contextlib.suppress(Exception):
                await auth.keys.revoke(record.id)

    # ---- storage -----------------------------------------------------------------------------
    def _save(self, row: Benchmark) -> None:
        with self.db.session() as s:
            s.merge(row)
            s.commit()

    def list(self, limit: int = 100) -> list[Benchmark]:
        with self.db.session() as s:
            stmt = select(Benchmark).order_by(col(Benchmark.created_at).desc()).limit(limit)
            return list(s.exec(stmt))

    def get(self, benchmark_id: str) -> Benchmark | None:
        with self.db.session() as s:
            return s.get(Benchmark, benchmark_id)
