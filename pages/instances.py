"""The instances page: a live card per llama-server, with the model library beside it.

State changes and log lines arrive as events (no polling); a slow timer only refreshes the numbers
that change continuously (uptime, CPU, RAM, request counters).
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from fastapi import Request
from fastapi.responses import Response
from nicegui import ui

from components.connection import ConnectionPanel
from components.dialogs import confirm
from components.inflight import InflightList
from components.instance_card import InstanceCard
from components.memory_bar import MemoryBars
from llamaman.instances.supervisor import InstanceError
from llamaman.services import Services
from pages.library import LIVE, launch_url, library_drawer
from pages.shell import Shell, client_endpoint, fail, subscribe


class InstancesPanel:
    def __init__(self, services: Services, shell: Shell) -> None:
        self.services = services
        self.shell = shell
        self.cards: dict[str, InstanceCard] = {}
        with ui.row().classes("w-full items-center"):
            ui.label("Instances").classes("text-h6")
            self.summary = ui.label("").classes("text-sm opacity-75")
            ui.space()
            self.stop_all_btn = ui.button("Stop all", icon="stop_circle", on_click=self.confirm_stop_all)
            self.stop_all_btn.props("outline color=warning").mark("stop-all")
            ui.button("Launch", icon="rocket_launch", on_click=lambda: ui.navigate.to("/launch"))
        self.memory = MemoryBars()
        self.memory.update(services.router.placement_view()["devices"])
        self.empty = ui.label(
            "Nothing running. Pick a model in the library (the menu button, top left) or open Launch; "
            "models requested "
            "through the proxy appear here too."
        ).classes("text-sm opacity-75")
        self.grid = ui.element("div").classes("w-full grid grid-cols-1 xl:grid-cols-2 gap-3")
        InflightList(services.relay.inflight.snapshot, services.relay.inflight.cancel)
        self.sync()
        subscribe(services, "instance.", self.on_event, resync=self.sync)
        ui.timer(2.0, self.tick)

    def _view(self, m: Any) -> dict[str, Any]:
        return m.view(self.services.instance_extra(m))

    def _totals(self) -> tuple[int, int | None]:
        reading = self.shell.latest_system
        return os.cpu_count() or 1, reading.ram_total if reading else None

    def _add(self, m: Any) -> None:
        cpus, ram = self._totals()
        with self.grid:
            self.cards[m.id] = InstanceCard(
                self._view(m),
                log_lines=m.proc.tail(200),
                on_stop=self.stop,
                on_restart=self.restart,
                on_remove=self.remove,
                on_edit=self.edit,
                on_download_log=self.download_log,
                cpu_count=cpus,
                ram_total=ram,
            )

    def _drop(self, instance_id: str) -> None:
        card = self.cards.pop(instance_id, None)
        if card is not None:
            card.card.delete()

    def _counts(self) -> None:
        states = [m.state.value for m in self.services.supervisor.list()]
        self.empty.visible = not states
        healthy = states.count("healthy")
        self.stop_all_btn.enabled = any(s in LIVE for s in states)
        self.summary.text = f"{len(states)} in all, {healthy} healthy" if states else ""

    def sync(self) -> None:
        """Rebuild from the supervisor (first render, and after a reconnect)."""
        live = {m.id: m for m in self.services.supervisor.list()}
        for gone in [i for i in self.cards if i not in live]:
            self._drop(gone)
        for m in live.values():
            card = self.cards.get(m.id)
            if card is None:
                self._add(m)
            else:
                card.update(self._view(m))
                card.log.replace(m.proc.tail(200))
        self._counts()

    def on_event(self, ev: Any) -> None:
        instance_id = ev.data.get("id")
        if ev.topic == "instance.removed":
            self._drop(instance_id)
            self._counts()
            return
        m = self.services.supervisor.instances.get(instance_id)
        if m is None:
            return
        card = self.cards.get(instance_id)
        if card is None:
            self._add(m)
            self._counts()
            return
        if ev.topic == "instance.log":
            card.push_log(ev.data.get("line", ""))
        else:
            card.update(self._view(m))
            self._counts()

    def tick(self) -> None:
        if not ui.context.client.has_socket_connection:
            return  # the browser is away: no cards to refresh (and no usage sampling asked for)
        self.memory.update(self.services.router.placement_view()["devices"])
        cpus, ram = self._totals()
        for instance_id, card in list(self.cards.items()):
            m = self.services.supervisor.instances.get(instance_id)
            if m is not None:
                card.cpu_count, card.ram_total = cpus, ram
                card.update(self._view(m))

    # ---- actions -----------------------------------------------------------------------------
    async def _act(self, what: str, instance_id: str) -> None:
        try:
            await getattr(self.services.supervisor, what)(instance_id)
        except InstanceError as exc:
            fail(f"{what.capitalize()} failed: {exc.message}")
        except Exception as exc:
            fail(f"{what.capitalize()} failed: {exc}")

    def confirm_stop_all(self) -> None:
        live = [m for m in self.services.supervisor.list() if m.state.value in LIVE]
        if not live:
            ui.notify("Nothing is running", type="info")
            return
        confirm(
            f"Stop all {len(live)} running instance(s)?",
            [f"{m.record.model_name} on port {m.record.port}" for m in live],
            "Stop all",
            self.stop_all,
            color="warning",
        )

    async def stop_all(self) -> None:
        live = [m for m in self.services.supervisor.list() if m.state.value in LIVE]
        await asyncio.gather(*(self._act("stop", m.id) for m in live))
        ui.notify(f"Stopped {len(live)} instance(s)", type="positive")

    def download_log(self, instance_id: str) -> None:
        m = self.services.supervisor.instances.get(instance_id)
        if m is None:
            fail("That instance is gone")
            return
        text = "\n".join(m.proc.tail(100_000)) + "\n"
        name = f"{m.record.model_name}-{instance_id}-{time.strftime('%Y%m%d-%H%M%S')}.log"
        ui.download.content(text.encode(), name, "text/plain")

    def edit(self, instance_id: str) -> None:
        m = self.services.supervisor.instances.get(instance_id)
        if m is not None:
            ui.navigate.to(f"{launch_url(m.record.model_path)}&instance={instance_id}")

    async def stop(self, instance_id: str) -> None:
        await self._act("stop", instance_id)

    async def restart(self, instance_id: str) -> None:
        await self._act("restart", instance_id)

    async def remove(self, instance_id: str) -> None:
        await self._act("remove", instance_id)


def register(services: Services, shell: Shell) -> None:
    @ui.page("/")
    async def instances_page(request: Request) -> Response | None:
        user, redirect = shell.guard(request)
        if redirect is not None:
            return redirect
        with shell.frame("/", user=user, drawer=library_drawer(services)):
            with (
                ui.expansion("Connect a client", icon="cable")
                .classes("w-full")
                .props("dense header-class=text-subtitle1")
            ):
                ConnectionPanel(
                    client_endpoint(services, request),
                    note="Point Ollama or OpenAI clients here; model endpoints need an API key "
                    "(API keys page) while require-auth is on.",
                )
            InstancesPanel(services, shell)
        return None
