"""The nodes view: one card per box sharing the database, with its health, models, memory and load.
Render only: it takes plain dicts as ``GET /api/nodes`` returns them."""

from __future__ import annotations

from typing import Any

from nicegui import ui

from components import fmt

HOW_TO = (
    "This box runs on its own. To run several boxes as one service, give each the same "
    "DATABASE_URL (a shared MariaDB) and LLAMAMAN_NODE_SECRET (16 characters or more), its own "
    "LLAMAMAN_NODE_NAME, and LLAMAMAN_NODE_URL: how the other boxes reach its main port. Every "
    "box then lists the models of all of them and sends each request to the box best placed to "
    "answer it."
)


def health(node: dict[str, Any]) -> tuple[str, str]:
    """The health chip's text and colour."""
    if node.get("alive"):
        return "healthy", "positive"
    # A time, not a count of seconds: the card is redrawn only when something else changes.
    return f"silent since {fmt.clock(node.get('heartbeat_at'))}", "negative"


def memory_line(device: dict[str, Any]) -> tuple[str, float]:
    """A device's label and the used share of its limit (or of its total when it has none)."""
    total = int(device.get("total") or 0)
    whole = int(device.get("limit") or total)
    free = int(device.get("free") or 0)
    used = max(0, total - free)
    name = device.get("name") or device.get("id") or "?"
    label = f"{name}: {fmt.size(used)} used of {fmt.size(whole)}, {fmt.size(free)} free"
    return label, fmt.percent(used, whole)


class NodeCards:
    def __init__(self) -> None:
        self.box = ui.row().classes("w-full gap-4 items-stretch")
        self._last: list[dict[str, Any]] | None = None

    def update(self, nodes: list[dict[str, Any]]) -> None:
        # Seconds since the heartbeat tick every second; redraw only when something else moved.
        shown = [
            {k: v for k, v in n.items() if k not in ("seconds_since_heartbeat", "heartbeat_at")}
            for n in nodes
        ]
        if shown == self._last:
            return
        self._last = shown
        self.box.clear()
        with self.box:
            if not nodes:
                ui.label("No node has sent a heartbeat yet.").classes("opacity-75")
            for node in nodes:
                self._card(node)

    def _card(self, node: dict[str, Any]) -> None:
        text, colour = health(node)
        card = ui.card().props("flat bordered").classes("w-96 max-w-full q-pa-md gap-2")
        card.mark(f"node-{node['name']}")
        with card:
            with ui.row().classes("w-full items-center gap-2"):
                ui.icon("hub").classes("text-primary")
                ui.label(node["name"]).classes("text-h6")
                if node.get("self"):
                    ui.badge("this box", color="primary").props("outline")
                ui.space()
                ui.chip(text, color=colour, text_color="white").props("dense").mark("node-health")
            ui.label(node.get("url") or fmt.DASH).classes("text-xs opacity-75")
            ui.label(
                f"{node.get('inflight', 0)} request(s) running, {node.get('queued', 0)} waiting"
                f" · up {fmt.ago(node.get('started_at')).removesuffix(' ago')}"
                f" · version {node.get('version') or fmt.DASH}"
            ).classes("text-sm").mark("node-load")
            for device in node.get("memory") or []:
                label, share = memory_line(device)
                ui.label(label).classes("text-xs opacity-75")
                bar = ui.linear_progress(value=share, show_value=False).props("size=6px")
                bar.props["aria-label"] = label
            resident = node.get("resident") or []
            ui.label(f"Loaded ({len(resident)})").classes("text-subtitle2")
            with ui.row().classes("gap-1"):
                for r in resident:
                    ui.chip(f"{r['name']} ({r['state']})").props("dense outline")
                if not resident:
                    ui.label("none").classes("text-sm opacity-75")
            on_disk = node.get("models_on_disk") or []
            with ui.expansion(f"On disk ({len(on_disk)})").classes("w-full").props("dense"):
                with ui.row().classes("gap-1"):
                    for name in on_disk:
                        ui.chip(name).props("dense")
