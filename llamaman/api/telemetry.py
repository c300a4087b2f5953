"""REST routes of the telemetry: /api/system-info, /api/gpu-info, /api/activity (+ CSV and summary),
/api/benchmarks, and /metrics for Prometheus."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query
from starlette.responses import Response

from llamaman.api.deps import ServicesDep
from llamaman.services import Services
from llamaman.telemetry.activity_query import (
    ACTIVITY_COLUMNS,
    SUMMARY_COLUMNS,
    ActivityFilters,
    FilterError,
    parse_time,
    query_rows,
    row_dict,
    summary,
    to_csv,
)
from llamaman.telemetry.benchmarks import benchmark_dict
from llamaman.telemetry.loadtest import BenchmarkParams
from llamaman.telemetry.metrics import CONTENT_TYPE

router = APIRouter(tags=["telemetry"])
# Only /metrics: for apps that serve no REST API of their own (the proxy port).
metrics_router = APIRouter(tags=["telemetry"])


@metrics_router.get("/metrics", include_in_schema=False)
async def metrics(services: ServicesDep) -> Response:
    telemetry = services.telemetry
    telemetry.activity.pump()  # requests that ended since the writer last ran count too
    return Response(telemetry.metrics.render(), media_type=CONTENT_TYPE)


router.include_router(metrics_router)


@router.get("/api/system-info")
async def system_info(services: ServicesDep) -> dict[str, Any]:
    return await asyncio.to_thread(services.telemetry.system.collect)


@router.get("/api/gpu-info")
async def gpu_info(services: ServicesDep) -> dict[str, Any]:
    telemetry = services.telemetry
    if telemetry.gpu.sampled_at is None:
        await telemetry.gpu.refresh()  # before the sampler's first round (or without a started sampler)
    return telemetry.gpu_info()


# ---- activity ----------------------------------------------------------------------------------
_DESCRIBE = {
    "model": "exact model name",
    "endpoint": "exact path, e.g. /v1/chat/completions",
    "status": "a code (200), a class (5xx), 'ok' or 'error'",
    "since": "Unix seconds or ISO-8601, inclusive",
    "until": "Unix seconds or ISO-8601, exclusive",
}


def activity_filters(
    model: str | None = Query(None, description=_DESCRIBE["model"]),
    endpoint: str | None = Query(None, description=_DESCRIBE["endpoint"]),
    status: str | None = Query(None, description=_DESCRIBE["status"]),
    key_name: str | None = Query(None),
    since: str | None = Query(None, description=_DESCRIBE["since"]),
    until: str | None = Query(None, description=_DESCRIBE["until"]),
) -> ActivityFilters:
    """The filters every activity route takes, as one dependency."""
    try:
        return ActivityFilters(
            model=model or None,
            endpoint=endpoint or None,
            status=status or None,
            key_name=key_name or None,
            since=parse_time(since, "since"),
            until=parse_time(until, "until"),
        )
    except FilterError as exc:
        raise HTTPException(400, str(exc)) from None


Filters = Annotated[ActivityFilters, Depends(activity_filters)]


async def _rows(
    services: Services, filters: ActivityFilters, limit: int | None, offset: int
) -> tuple[list[dict[str, Any]], int]:
    activity = services.telemetry.activity
    await activity.flush()  # what was just proxied shows at once
    rows, total = await asyncio.to_thread(query_rows, activity.db, filters, limit, offset)
    return [row_dict(r) for r in rows], total


@router.get("/api/activity")
async def activity(
    services: ServicesDep,
    filters: Filters,
    limit: int = Query(100, ge=1, le=10_000),
    offset: int = Query(0, ge=0),
) -> dict[str, Any]:
    """Logged requests, newest first."""
    items, total = await _rows(services, filters, limit, offset)
    return {"items": items, "total": total, "limit": limit, "offset": offset}


@router.get("/api/activity.csv")
async def activity_csv(
    services: ServicesDep,
    filters: Filters,
    limit: int | None = Query(None, ge=1),
    offset: int = Query(0, ge=0),
) -> Response:
    items, _ = await _rows(services, filters, limit, offset)
    return _csv(to_csv(items, ACTIVITY_COLUMNS), "activity.csv")


async def _summary(services: Services, filters: ActivityFilters) -> list[dict[str, Any]]:
    activity = services.telemetry.activity
    await activity.flush()
    return await asyncio.to_thread(summary, activity.db, filters)


@router.get("/api/activity/summary")
async def activity_summary(
    services: ServicesDep,
    filters: Filters,
) -> dict[str, Any]:
    """Per model: requests, tokens, mean TTFT, tokens/s and energy per 1,000 tokens."""
    return {"models": await _summary(services, filters), "gpu_energy": services.telemetry.gpu.has_power()}


@router.get("/api/activity/summary.csv")
async def activity_summary_csv(
    services: ServicesDep,
    filters: Filters,
) -> Response:
    return _csv(to_csv(await _summary(services, filters), SUMMARY_COLUMNS), "activity-summary.csv")


def _csv(text: str, filename: str) -> Response:
    return Response(
        text,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


# ---- benchmarks --------------------------------------------------------------------------------
@router.post("/api/benchmarks", status_code=202)
async def start_benchmark(body: BenchmarkParams, services: ServicesDep) -> dict[str, Any]:
    """Start a benchmark in the background; poll GET /api/benchmarks/{id} for its results."""
    entry = services.router.resolve(body.model)
    if entry is None:
        await services.library.ascan()
        entry = services.router.resolve(body.model)
    if entry is None:
        raise HTTPException(404, f"model '{body.model}' not found")
    row = await services.telemetry.benchmarks.submit(body)
    return benchmark_dict(row)


@router.get("/api/benchmarks")
async def list_benchmarks(
    services: ServicesDep, limit: int = Query(100, ge=1, le=1000)
) -> list[dict[str, Any]]:
    rows = await asyncio.to_thread(services.telemetry.benchmarks.list, limit)
    return [benchmark_dict(b) for b in rows]


@router.get("/api/benchmarks/{benchmark_id}")
async def get_benchmark(benchmark_id: str, services: ServicesDep) -> dict[str, Any]:
    row = await asyncio.to_thread(services.telemetry.benchmarks.get, benchmark_id)
    if row is None:
        raise HTTPException(404, f"benchmark {benchmark_id!r} not found")
    return benchmark_dict(row)
