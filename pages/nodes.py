"""Nodes: the boxes sharing this database, live (``nodes.changed``), with a timer for the seconds
since each heartbeat; on a standalone box, how to add nodes. Also GET /api/nodes."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import Response
from nicegui import ui

from components.nodes import HOW_TO, NodeCards
from llamaman.api.nodes import node_view
from llamaman.services import Services
from pages.shell import Shell, subscribe


class NodesPanel:
    def __init__(self, services: Services) -> None:
        self.services = services
        registry = services.nodes
        with ui.row().classes("w-full items-center gap-3"):
            ui.label("Nodes").classes("text-h6")
            self.summary = ui.label("").classes("text-sm opacity-75").mark("nodes-summary")
        self.error = ui.label("").classes("text-sm text-negative").mark("nodes-error")
        if not registry.enabled:
            ui.label(HOW_TO).classes("max-w-3xl").mark("nodes-how-to")
            self.cards: NodeCards | None = None
            return
        self.cards = NodeCards()
        subscribe(services, "nodes.", self._changed, resync=self.refresh)
        ui.timer(2.0, self.refresh)  # the silences grow between events
        self.refresh()

    def _changed(self, _ev: Any) -> None:
        self.refresh()

    def refresh(self) -> None:
        if self.cards is None:
            return
        registry = self.services.nodes
        now = registry.clock()
        nodes = [node_view(v, now, registry.name) for v in registry.nodes()]
        alive = sum(1 for n in nodes if n["alive"])
        self.summary.text = f"{alive} of {len(nodes)} node(s) in rotation; this box is {registry.name}"
        self.error.text = f"Heartbeat failing: {registry.last_error}" if registry.last_error else ""
        self.cards.update(nodes)


def register(services: Services, shell: Shell) -> None:
    @ui.page("/nodes")
    async def nodes_page(request: Request) -> Response | None:
        user, redirect = shell.guard(request)
        if redirect is not None:
            return redirect
        with shell.frame("/nodes", user=user):
            NodesPanel(services)
        return None
