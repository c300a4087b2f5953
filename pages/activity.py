"""The activity page: recent proxied requests (model, tokens, TTFT, tokens/s) and a per-model summary."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import Request
from fastapi.responses import Response
from nicegui import ui

from components import fmt
from components.a11y import named
from components.activity_charts import ActivityCharts, load_ms, series
from components.data_table import table
from llamaman.services import Services
from pages.shell import Shell, fail

RECENT = [
    ("when", "Time"), ("model", "Model"), ("endpoint", "Endpoint"), ("key_name", "Key"), ("status", "Status"),
    ("prompt_tokens", "Prompt"), ("completion_tokens", "Completion"), ("ttft", "TTFT"),
    ("tps", "Tokens/s"), ("duration", "Duration"), ("load", "Model load"), ("energy", "Energy"),
    ("reason", "Reason"),
]  # fmt: skip
SUMMARY = [
    ("model", "Model"), ("requests", "Requests"), ("errors", "Errors"), ("total_tokens", "Tokens"),
    ("ttft", "Mean TTFT"), ("tps", "Tokens/s"), ("energy", "J / 1k tokens"),
]  # fmt: skip
STATUS = {
    "": "All",
    "ok": "OK",
    "error": "Errors (refused or failed)",
    "4xx": "Refused (4xx)",
    "5xx": "Failed (5xx)",
}
EXPORT_LIMIT = 100_000
# Field names under which the activity API may give why a request was refused or failed.
REASON_FIELDS = ("error", "reason", "error_message")


def _ms(v: float | None) -> str:
    return fmt.DASH if v is None else f"{v:.0f} ms"


def _num(v: float | None, unit: str = "") -> str:
    return fmt.DASH if v is None else f"{v:.1f}{unit}"


def _recent_row(r: dict[str, Any]) -> dict[str, Any]:
    return {
        **r,
        "when": time.strftime("%H:%M:%S", time.localtime(r["ts"])),
        "key_name": r.get("key_name") or fmt.DASH,
        "node": r.get("node") or fmt.DASH,
        "ttft": _ms(r.get("ttft_ms")),
        "tps": _num(r.get("tokens_per_s")),
        "duration": _ms(r.get("duration_ms")),
        "energy": _num(r.get("energy_j"), " J"),
        "load": f"cold start {wait / 1000:.1f} s" if (wait := load_ms(r)) else "",
        "reason": next((str(r[f]) for f in REASON_FIELDS if r.get(f)), ""),
    }


def _summary_row(r: dict[str, Any]) -> dict[str, Any]:
    return {
        **r,
        "id": r["model"],
        "ttft": _ms(r.get("mean_ttft_ms")),
        "tps": _num(r.get("tokens_per_s")),
        "energy": _num(r.get("j_per_1k_tokens")),
    }


class ActivityPanel:
    def __init__(self, services: Services, activity: Any) -> None:
        from llamaman.telemetry import activity_query as q

        self.q = q
        self.services = services
        self.activity = activity
        with ui.row().classes("w-full items-center gap-3"):
            ui.label("Activity").classes("text-h6")
            self.total = ui.label("").classes("text-sm opacity-75")
        with ui.row().classes("w-full items-center gap-3"):
            models = sorted({m.name for m in services.library.models})
            self.model = ui.input("Model", autocomplete=models).props("dense outlined clearable debounce=300")
            self.model.classes("w-48 max-w-full").mark("activity-model")
            self.key = ui.input("Key name").props("dense outlined clearable debounce=300")
            self.key.classes("w-48 max-w-full").mark("activity-key")
            self.status = ui.select(STATUS, value="", label="Status").props("dense outlined").classes("w-56")
            self.status.mark("activity-status")
            self.auto = ui.switch("Live", value=True)
            named(ui.button(icon="refresh", on_click=self.refresh).props("flat round"), "Refresh")
            ui.button("CSV", icon="download", on_click=self.export).props("outline").mark("activity-csv")
        self.model.on_value_change(self.refresh)
        self.key.on_value_change(self.refresh)
        self.status.on_value_change(self.refresh)
        self.charts = ActivityCharts()
        ui.label("Per model").classes("text-subtitle1")
        self.summary = table(SUMMARY, [], row_key="id")
        ui.label("Recent requests").classes("text-subtitle1")
        # Which box answered: only a question when there are several.
        columns = [*RECENT[:1], ("node", "Node"), *RECENT[1:]] if services.nodes.enabled else RECENT
        self.recent = table(columns, [], pagination=15)
        self.recent.mark("activity-table")
        ui.timer(3.0, self._tick)

    async def _tick(self) -> None:
        # Not while the browser is away: each refresh reads the database.
        if self.auto.value and ui.context.client.has_socket_connection:
            await self.refresh()

    def filters(self) -> Any:
        return self.q.ActivityFilters(
            model=(self.model.value or "").strip() or None,
            key_name=(self.key.value or "").strip() or None,
            status=self.status.value or None,
        )

    async def export(self) -> None:
        """The filtered log as CSV, the same columns as GET /api/activity.csv."""
        try:
            rows, _ = await asyncio.to_thread(
                self.q.query_rows, self.activity.db, self.filters(), EXPORT_LIMIT, 0
            )
            text = self.q.to_csv([self.q.row_dict(r) for r in rows], self.q.ACTIVITY_COLUMNS)
        except Exception as exc:
            fail(f"Could not export the activity log: {exc}")
            return
        ui.download.content(
            text.encode(), f"llamaman-activity-{time.strftime('%Y%m%d-%H%M%S')}.csv", "text/csv"
        )

    async def refresh(self) -> None:
        try:
            filters = self.filters()
            flush = getattr(self.activity, "flush", None)
            if flush is not None:
                await flush()
            rows, total = await asyncio.to_thread(self.q.query_rows, self.activity.db, filters, 200, 0)
            summary = await asyncio.to_thread(self.q.summary, self.activity.db, filters)
        except Exception as exc:
            fail(f"Could not read the activity log: {exc}")
            self.auto.value = False
            return
        dicts = [self.q.row_dict(r) for r in rows]
        self.recent.rows = [_recent_row(d) for d in dicts]
        self.charts.set(series(dicts))
        self.summary.rows = [_summary_row(r) for r in summary]
        self.total.text = f"{fmt.count(total)} request(s) logged" + (
            ", newest 200 shown" if total > 200 else ""
        )


def register(services: Services, shell: Shell) -> None:
    @ui.page("/activity")
    async def activity_page(request: Request) -> Response | None:
        user, redirect = shell.guard(request)
        if redirect is not None:
            return redirect
        with shell.frame("/activity", user=user):
            panel = ActivityPanel(services, services.telemetry.activity)
            await panel.refresh()
        return None
