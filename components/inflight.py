"""Requests queued and running on the model endpoints, each with a cancel button."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from nicegui import ui

from components import fmt

STATE_COLORS = {"queued": "orange", "running": "positive"}


class InflightList:
    """Refreshes itself from ``read`` every ``interval`` seconds (the rows change with every token, so
    a timer is cheaper than an event per chunk); ``cancel`` takes a request id."""

    def __init__(
        self,
        read: Callable[[], list[dict[str, Any]]],
        cancel: Callable[[str], Any],
        *,
        interval: float = 1.0,
    ) -> None:
        self.read = read
        self.cancel = cancel
        self.rows: dict[str, tuple[ui.element, ui.badge, ui.label]] = {}
        with ui.column().classes("w-full gap-1").mark("inflight") as self.box:
            with ui.row().classes("w-full items-center gap-2"):
                ui.label("Requests in flight").classes("text-subtitle1")
                self.summary = ui.label("").classes("text-sm opacity-75").mark("inflight-summary")
            self.empty = ui.label("No request is queued or running.").classes("text-sm opacity-75")
            self.list = ui.column().classes("w-full gap-1")
        self.refresh()
        ui.timer(interval, self.refresh)

    def refresh(self) -> None:
        self.update(self.read())

    def update(self, rows: list[dict[str, Any]]) -> None:
        live = {r["id"]: r for r in rows}
        for gone in [i for i in self.rows if i not in live]:
            self.rows.pop(gone)[0].delete()
        for row in rows:
            if row["id"] not in self.rows:
                self._add(row)
            _, badge, detail = self.rows[row["id"]]
            badge.text = row["state"]
            badge.props["color"] = STATE_COLORS.get(row["state"], "grey")
            detail.text = _detail(row)
        queued = sum(1 for r in rows if r["state"] == "queued")
        self.summary.text = f"{len(rows) - queued} running, {queued} queued" if rows else ""
        self.empty.visible = not rows

    def _add(self, row: dict[str, Any]) -> None:
        request_id = row["id"]
        with (
            self.list,
            ui.row().classes("w-full items-center no-wrap gap-2").mark(f"inflight-{request_id}") as line,
        ):
            badge = ui.badge("", color="grey").classes("text-xs")
            ui.label(row["model"]).classes("text-sm text-weight-medium ellipsis")
            detail = ui.label("").classes("text-xs opacity-75 lm-mono grow ellipsis")
            button = ui.button(icon="cancel", on_click=lambda: self._cancel(request_id))
            button.props("flat round dense color=negative")
            button.props["aria-label"] = f"Cancel request {request_id}"
            button.mark(f"cancel-{request_id}").tooltip("Cancel this request")
        self.rows[request_id] = (line, badge, detail)

    async def _cancel(self, request_id: str) -> None:
        try:
            done = self.cancel(request_id)
            if inspect.isawaitable(done):
                await done
        except Exception as exc:
            ui.notify(f"Cancel failed: {getattr(exc, 'message', exc)}", type="negative")
            return
        ui.notify(f"Cancelled request {request_id}", type="info")
        self.refresh()


def _detail(row: dict[str, Any]) -> str:
    who = row.get("key") or "anonymous"
    tokens = f" · {fmt.count(row.get('tokens'))} tokens" if row["state"] == "running" else ""
    return f"{row['id']} · {who} · {fmt.duration(row.get('age_s'))}{tokens} · {row.get('endpoint', '')}"
