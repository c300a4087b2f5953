"""One instance as a card: status, model, port, uptime, requests, CPU/RAM, actions and a live log."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from nicegui import ui

from components import fmt
from components.a11y import named
from components.dialogs import confirm
from components.gauges import UsageBar
from components.log_view import LogView

STATUS_COLORS = {
    "starting": "orange",
    "healthy": "positive",
    "sleeping": "blue-grey",
    "stopping": "orange-8",
    "stopped": "grey",
    "failed": "negative",
    "restarting": "deep-orange",
}

Action = Callable[[str], Awaitable[None]]


class InstanceCard:
    def __init__(
        self,
        view: dict[str, Any],
        *,
        log_lines: Iterable[str],
        on_stop: Action,
        on_restart: Action,
        on_remove: Action,
        cpu_count: int,
        ram_total: int | None,
        on_edit: Callable[[str], None] | None = None,
        on_download_log: Callable[[str], None] | None = None,
    ) -> None:
        self.id: str = view["id"]
        self.cpu_count = max(cpu_count, 1)
        self.ram_total = ram_total
        self.on_remove = on_remove
        with (
            ui.card()
            .props("flat bordered")
            .classes("w-full q-pa-sm gap-2")
            .mark(f"instance-{self.id}") as self.card
        ):
            with ui.row().classes("w-full items-center no-wrap gap-2"):
                self.badge = ui.badge("", color="grey").classes("text-sm q-px-sm").mark("status")
                with ui.column().classes("gap-0 grow min-w-0"):
                    self.title = ui.label(view["model_name"]).classes(
                        "text-subtitle1 text-weight-medium ellipsis"
                    )
                    self.sub = ui.label("").classes("text-xs opacity-75 lm-mono ellipsis w-full")
                    with self.sub:
                        self.sub_tip = ui.tooltip("")
                self.stop_btn = ui.button(icon="stop_circle", on_click=lambda: on_stop(self.id))
                named(self.stop_btn.props("flat round dense color=warning").mark("stop"), "Stop")
                restart = ui.button(icon="restart_alt", on_click=lambda: on_restart(self.id))
                named(restart.props("flat round dense color=primary").mark("restart"), "Restart")
                if on_edit is not None:
                    edit = ui.button(icon="edit", on_click=lambda: on_edit(self.id))
                    named(edit.props("flat round dense color=primary").mark("edit"), "Edit and relaunch")
                remove = ui.button(icon="delete", on_click=self._confirm_remove)
                named(remove.props("flat round dense color=negative").mark("remove"), "Remove")
            self.progress = ui.linear_progress(value=0, show_value=False, size="6px").props(
                'color=orange aria-label="Loading the model"'
            )
            self.progress.mark("load-progress")
            self.error = ui.label("").classes("text-sm text-negative lm-mono").style("white-space: pre-wrap")
            with ui.row().classes("w-full items-center gap-x-4 gap-y-1"):
                self.uptime = self._stat("Uptime")
                self.requests = self._stat("Active / queued")
                self.vram = self._stat("VRAM")
                self.cpu = UsageBar("CPU", "w-24")
                self.ram = UsageBar("RAM", "w-28")
            with ui.expansion("Log", icon="article", value=True).classes("w-full").props("dense"):
                self.log = LogView(log_lines, height="11rem")
                if on_download_log is not None:
                    ui.button(
                        "Download log", icon="download", on_click=lambda: on_download_log(self.id)
                    ).props("flat dense no-caps").mark("download-log")
        self.update(view)

    @staticmethod
    def _stat(label: str) -> ui.label:
        with ui.column().classes("gap-0"):
            ui.label(label).classes("text-xs opacity-70")
            return ui.label(fmt.DASH).classes("text-sm lm-mono")

    def update(self, v: dict[str, Any]) -> None:
        status = v["status"]
        self.badge.text = status
        self.badge.props["color"] = STATUS_COLORS.get(status, "grey")
        self.title.text = v["model_name"]
        s = v.get("settings") or {}
        self.sub.text = (
            f"port {v['port']} · ctx {s.get('ctx_size', fmt.DASH)} · pid {v.get('pid') or fmt.DASH}"
            f" · {v.get('origin', 'manual')}"
        )
        behind = f"; llama-server itself on {v['internal_port']}" if v.get("internal_port") else ""
        self.sub_tip.text = f"{v['model_path']}{behind}"
        starting = status in ("starting", "restarting")
        self.progress.visible = starting
        self._show_progress(v["model_name"], v.get("load_progress") if starting else None)
        # While it restarts after a crash the reason shows too (and the attempt it is on).
        error = v.get("error") if status in ("failed", "restarting") else None
        self.error.text = _short(error) if error else ""
        self.error.visible = bool(error)
        self.stop_btn.enabled = status in ("starting", "healthy", "sleeping")
        if starting and v.get("started_at"):
            self.uptime.text = f"loading {fmt.duration(time.time() - v['started_at'])}"
        else:
            self.uptime.text = fmt.duration(v.get("uptime_seconds")) if status == "healthy" else fmt.DASH
        self.requests.text = f"{v.get('active_requests', 0)} / {v.get('queued_requests', 0)}"
        cpu = float(v.get("cpu_percent") or 0.0)
        self.cpu.set(cpu / (100 * self.cpu_count), f"{cpu:.0f}%")
        rss = int(v.get("rss_bytes") or 0)
        self.ram.set(fmt.percent(rss, self.ram_total or 0), fmt.size(rss))
        vram = v.get("gpu_memory_bytes")
        self.vram.parent_slot.parent.visible = vram is not None  # type: ignore[union-attr]
        self.vram.text = fmt.size(vram) if vram else "0 B"

    def _show_progress(self, model: str, progress: dict[str, Any] | None) -> None:
        """How far the load has got; without a reading (a restart's wait) the bar just moves."""
        if progress is None:
            self.progress.props["indeterminate"] = True
            # Set as a value, never parsed from a string: a model name must not reach the markup.
            self.progress.props["aria-label"] = f"{model} is starting"
            self.progress.update()
            return
        self.progress.props.pop("indeterminate", None)
        self.progress.value = float(progress.get("fraction") or 0)
        share = f"{self.progress.value:.0%}"
        self.progress.props["aria-label"] = f"Loading {model}: {progress.get('stage')}, {share}"
        self.progress.update()

    def push_log(self, line: str) -> None:
        self.log.push(line)

    def _confirm_remove(self) -> None:
        confirm(
            f"Remove {self.title.text} ({self.id})?",
            ["The server is stopped and its record deleted; its log file stays on disk."],
            "Remove",
            lambda: self.on_remove(self.id),
        )


def _short(error: str, lines: int = 6) -> str:
    parts = error.strip().splitlines()
    return "\n".join(parts[:lines] + (["…"] if len(parts) > lines else []))
