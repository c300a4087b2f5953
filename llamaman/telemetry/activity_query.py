"""Reading the activity log: filters, the per-model summary (with energy per 1,000 tokens), CSV."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import case, func
from sqlmodel import col, select

from llamaman.core.db import Database
from llamaman.core.errors import Invalid
from llamaman.core.tables import RequestLog


class FilterError(Invalid, ValueError):
    """A filter value that cannot be understood."""


def parse_time(value: str | float | None, name: str) -> float | None:
    """Unix seconds, or an ISO-8601 date/time (UTC when it names no zone)."""
    if value is None or value == "":
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(str(value))
    except ValueError:
        raise FilterError(f"{name}: expected Unix seconds or an ISO-8601 time, got {value!r}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


@dataclass
class ActivityFilters:
    model: str | None = None
    endpoint: str | None = None
    status: str | None = None  # "200", "4xx", "ok" (< 400) or "error" (>= 400)
    key_name: str | None = None
    since: float | None = None
    until: float | None = None

    def __post_init__(self) -> None:
        if self.status:
            _status_clauses(self.status.strip().lower())  # refuse a bad value before any query runs

    def clauses(self) -> list[Any]:
        out: list[Any] = []
        if self.model:
            out.append(col(RequestLog.model) == model_label(self.model))
        if self.endpoint:
            out.append(col(RequestLog.endpoint) == self.endpoint)
        if self.key_name:
            out.append(col(RequestLog.key_name) == self.key_name)
        if self.since is not None:
            out.append(col(RequestLog.ts) >= self.since)
        if self.until is not None:
            out.append(col(RequestLog.ts) < self.until)
        if self.status:
            out.extend(_status_clauses(self.status.strip().lower()))
        return out


def _status_clauses(s: str) -> list[Any]:
    status = col(RequestLog.status)
    if s == "ok":
        return [status < 400]
    if s == "error":
        return [status >= 400]
    if len(s) == 3 and s[0].isdigit() and s[1:] == "xx":
        base = int(s[0]) * 100
        return [status >= base, status < base + 100]
    if s.isdigit():
        return [status == int(s)]
    raise FilterError(f"status: expected a code (200), a class (5xx), 'ok' or 'error', got {s!r}")


# A refusal's or failure's message as kept on its row.
ERROR_CHARS = 1000


def model_label(name: str) -> str:
    """One name per model in the log: the playground names a file (``name.gguf``), clients name the
    model (``name``, ``name:latest``); all of them are logged and filtered as ``name``."""
    name = name.strip()
    name = name.removesuffix(":latest")
    return name[: -len(".gguf")] if name.lower().endswith(".gguf") else name


def row_dict(r: RequestLog) -> dict[str, Any]:
    return {
        "id": r.id,
        "ts": r.ts,
        "time": datetime.fromtimestamp(r.ts, UTC).isoformat(timespec="milliseconds"),
        "model": r.model,
        "endpoint": r.endpoint,
        "key_name": r.key_name,
        "status": r.status,
        "prompt_tokens": r.prompt_tokens,
        "completion_tokens": r.completion_tokens,
        "ttft_ms": r.ttft_ms,
        "duration_ms": r.duration_ms,
        "tokens_per_s": r.tokens_per_s,
        "energy_j": r.energy_j,
        "error": r.error,
        "load_ms": r.load_ms,
        "node": r.node,
    }


ACTIVITY_COLUMNS = [
    "id",
    "time",
    "ts",
    "model",
    "endpoint",
    "key_name",
    "status",
    "prompt_tokens",
    "completion_tokens",
    "ttft_ms",
    "duration_ms",
    "tokens_per_s",
    "energy_j",
    "error",
    "load_ms",
    "node",
]
SUMMARY_COLUMNS = [
    "model",
    "requests",
    "errors",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "mean_ttft_ms",
    "mean_duration_ms",
    "tokens_per_s",
    "energy_j",
    "j_per_1k_tokens",
    "requests_with_energy",
]


def to_csv(rows: Iterable[dict[str, Any]], columns: list[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: "" if r.get(k) is None else r[k] for k in columns})
    return buf.getvalue()


def query_rows(
    db: Database, filters: ActivityFilters, limit: int | None, offset: int
) -> tuple[list[RequestLog], int]:
    """Rows matching ``filters`` newest first, and how many match in all (blocking)."""
    where = filters.clauses()
    with db.session() as s:
        total = s.exec(select(func.count()).select_from(RequestLog).where(*where)).one()
        stmt = select(RequestLog).where(*where).order_by(col(RequestLog.id).desc()).offset(offset)
        if limit is not None:
            stmt = stmt.limit(limit)
        return list(s.exec(stmt)), int(total)


def summary(db: Database, filters: ActivityFilters) -> list[dict[str, Any]]:
    """Per model: requests, tokens, mean TTFT, tokens/s and energy (blocking).

    ``j_per_1k_tokens`` divides the energy by the tokens (prompt and completion) of the requests that
    were charged energy, so requests logged before a GPU was sampled do not dilute it; it is null
    when no request of the model has an energy figure (no GPU, or no power readings).
    """
    r = RequestLog
    tokens = col(r.prompt_tokens) + col(r.completion_tokens)
    stmt = (
        select(  # type: ignore[call-overload]  # sqlmodel types select() for at most four columns
            r.model,
            func.count(),
            func.sum(case((col(r.status) >= 400, 1), else_=0)),
            func.sum(r.prompt_tokens),
            func.sum(r.completion_tokens),
            func.avg(r.ttft_ms),
            func.avg(r.duration_ms),
            func.avg(r.tokens_per_s),
            func.sum(r.energy_j),
            func.count(col(r.energy_j)),
            func.sum(case((col(r.energy_j).is_not(None), tokens), else_=0)),
        )
        .where(*filters.clauses())
        .group_by(r.model)
        .order_by(r.model)
    )
    out = []
    with db.session() as s:
        for model, n, errors, prompt, completion, ttft, dur, tps, joules, n_energy, e_tokens in s.exec(stmt):
            joules = float(joules) if n_energy else None
            out.append(
                {
                    "model": model,
                    "requests": int(n),
                    "errors": int(errors or 0),
                    "prompt_tokens": int(prompt or 0),
                    "completion_tokens": int(completion or 0),
                    "total_tokens": int((prompt or 0) + (completion or 0)),
                    "mean_ttft_ms": _r(ttft),
                    "mean_duration_ms": _r(dur),
                    "tokens_per_s": _r(tps),
                    "energy_j": _r(joules),
                    "j_per_1k_tokens": _r(joules / e_tokens * 1000)
                    if joules is not None and e_tokens
                    else None,
                    "requests_with_energy": int(n_energy or 0),
                }
            )
    return out


def _r(v: Any) -> float | None:
    return round(float(v), 3) if v is not None else None
