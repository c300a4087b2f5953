"""Settings: the runtime settings (generated from RuntimeSettings, saved at once), the environment
they default from, the llama-server in use, and what the box has (CPU, memory, disk, GPUs)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import Request
from fastapi.responses import Response
from nicegui import ui
from pydantic import ValidationError

from components import fmt
from components.data_table import table
from components.model_form import ModelForm
from llamaman import __version__
from llamaman.core.runtime import RuntimeConfig, RuntimeSettings
from llamaman.services import Services
from pages.shell import VIEWER_REFUSAL, Shell, fail, viewer_may
from pages.users import AccountCard, UsersCard

LABELS = {
    "require_auth": "Require an API key for model endpoints",
    "max_models": "Models kept loaded",
    "memory_limit": "Memory limit per device (cpu=48GiB,gpu0=22GiB; empty = free at start)",
    "idle_timeout_min": "Idle timeout (min)",
    "evict_manual": "API traffic may evict manually launched instances",
    "cleanup_hours": "Clean up records after (hours)",
    "download_retries": "Download retries",
    "download_speed_limit_mbps": "Global download limit (Mbit/s)",
    "hf_token": "Hugging Face token",
    "activity_retention": "Activity rows kept",
}


def setting_sources(runtime: RuntimeConfig) -> dict[str, tuple[str, str | None]]:
    """Per setting: where its value comes from (``env``, ``saved`` or ``default``; a command-line flag
    counts as ``env``: both fix the value for this run) and, when fixed, the variable behind it."""
    pinned = runtime.pinned_by()
    return {
        name: ("env", pinned.get(name)) if source in ("env", "flag") else (source, None)
        for name, source in runtime.sources().items()
    }


SOURCE_WORDS = {"saved": "saved here", "default": "default"}


class SettingsPanel:
    def __init__(self, services: Services, *, read_only: bool = False) -> None:
        self.services = services
        self.read_only = read_only
        with ui.card().props("flat bordered").classes("w-full q-pa-md gap-2"):
            with ui.row().classes("w-full items-center"):
                ui.label("Runtime settings").classes("text-h6")
                ui.label("Saved in the database; they take effect at once.").classes("text-sm opacity-75")
            self.form = ModelForm(RuntimeSettings, labels=LABELS, passwords=frozenset({"hf_token"}))
            self.error = ui.label("").classes("text-sm text-negative")
            with ui.row().classes("w-full justify-end gap-2"):
                if read_only:
                    ui.label(VIEWER_REFUSAL).classes("text-sm opacity-75")
                ui.button("Revert", icon="undo", on_click=self.load).props("flat")
                save = ui.button("Save", icon="save", on_click=self.save).mark("settings-save")
                if read_only:
                    save.disable()
        self.load()

    def load(self) -> None:
        self.form.clear_errors()
        self.error.text = ""
        self.form.set_values(self.services.runtime.current.public())
        self._show_sources()

    def _show_sources(self) -> None:
        for name, (source, variable) in setting_sources(self.services.runtime).items():
            el = self.form.inputs.get(name)
            if el is None:
                continue
            if source == "env" and isinstance(el, ui.switch):
                el.disable()
                el.text = f"{el.text} (set by {variable or 'the environment'})"
            elif source == "env":
                # The environment wins over a saved value: editing here would not take effect.
                el.props["readonly"] = True
                el.props["hint"] = f"set by {variable or 'the environment'} (change it there)"
                el.mark(f"field-{name}", f"from-env-{name}")
            elif source in SOURCE_WORDS and "hint" in el.props:
                base = str(el.props["hint"]).split(" · from: ")[0]
                el.props["hint"] = f"{base} · from: {SOURCE_WORDS[source]}"
            el.update()

    async def save(self) -> None:
        if self.read_only:
            fail(VIEWER_REFUSAL)
            return
        values = self.form.values()
        current = self.services.runtime.current.public()
        changes = {k: v for k, v in values.items() if v != current.get(k)}
        if not changes:
            ui.notify("Nothing changed", type="info")
            return
        try:
            await self.services.runtime.update(changes)
        except ValidationError as exc:
            self.error.text = "; ".join(self.form.show_errors(exc.errors()))  # type: ignore[arg-type]
            fail("Some settings are invalid: see the highlighted fields")
            return
        except Exception as exc:
            fail(f"Could not save: {exc}")
            return
        self.load()
        ui.notify(f"Saved: {', '.join(sorted(changes))}", type="positive")


def _unit(v: float | None, unit: str) -> str:
    return fmt.DASH if v is None else f"{v:.0f}{unit}"


def _system_rows(data: dict[str, Any]) -> list[tuple[str, Any]]:
    cpu, mem, disk, plat = data["cpu"], data["memory"], data.get("disk", {}), data.get("platform", {})
    used, total = mem.get("effective_used_bytes"), mem.get("effective_total_bytes")
    free, disk_total = disk.get("free_bytes"), disk.get("total_bytes")
    return [
        ("CPU", f"{cpu.get('effective_cores')} usable of {cpu.get('cores_logical')} logical cores"),
        ("Memory", f"{fmt.size(used)} used of {fmt.size(total)}"),
        ("Models disk", f"{fmt.size(free)} free of {fmt.size(disk_total)} ({disk.get('path', '')})"),
        (
            "Platform",
            f"{plat.get('system')} {plat.get('release')} {plat.get('machine')}, Python {plat.get('python')}",
        ),
    ]


def _kv(rows: list[tuple[str, Any]]) -> None:
    with ui.grid(columns="auto 1fr").classes("w-full gap-x-4 gap-y-1 text-sm"):
        for k, v in rows:
            ui.label(k).classes("opacity-70")
            ui.label(fmt.DASH if v is None or v == "" else str(v)).classes("lm-mono break-all")


def _binary(services: Services) -> None:
    b = services.supervisor.binary
    with ui.card().props("flat bordered").classes("w-full q-pa-md gap-2"):
        ui.label("llama-server").classes("text-h6")
        if b is None:
            ui.label(services.supervisor.binary_error or "no llama-server found").classes("text-negative")
            return
        _kv([
            ("Version", b.version), ("Path", b.path), ("Found via", b.source),
            ("Router mode", "yes" if b.supports_router else "no"), ("LlamaMan", __version__),
            ("Database", getattr(services.db, "backend", None)),
        ])  # fmt: skip


def _environment(services: Services) -> None:
    with ui.expansion("Environment (read-only)", icon="terminal").classes("w-full").props("dense"):
        env = services.settings.public_dict()
        _kv(sorted((k, v) for k, v in env.items()))


async def _system(shell: Shell) -> None:
    telemetry = shell.services.telemetry
    with ui.card().props("flat bordered").classes("w-full q-pa-md gap-2"):
        ui.label("System").classes("text-h6")
        try:
            data = await asyncio.to_thread(telemetry.system.collect)
        except Exception as exc:
            ui.label(f"could not read system information: {exc}").classes("text-negative")
            data = None
        if data:
            _kv(_system_rows(data))
        ui.label("GPUs").classes("text-subtitle1")
        info = telemetry.gpu.info()
        if not info.get("gpus"):
            ui.label(info.get("reason") or "no GPU found").classes("text-sm opacity-75")
            return
        rows = [
            {
                "id": g["index"], "name": g["name"], "vendor": g.get("vendor"),
                "memory": f"{fmt.size(g.get('memory_used_bytes'))} / {fmt.size(g.get('memory_total_bytes'))}",
                "util": _unit(g.get("utilization_percent"), "%"),
                "temp": _unit(g.get("temperature_c"), "°C"),
                "power": _unit(g.get("power_w"), " W"),
            }
            for g in info["gpus"]
        ]  # fmt: skip
        table([("id", "#"), ("name", "Name"), ("vendor", "Vendor"), ("memory", "VRAM"), ("util", "Util"),
               ("temp", "Temp"), ("power", "Power")], rows)  # fmt: skip


def register(services: Services, shell: Shell) -> None:
    @ui.page("/settings")
    async def settings_page(request: Request) -> Response | None:
        user, redirect = shell.guard(request)
        if redirect is not None:
            return redirect
        identity = shell.identity(request)
        with shell.frame("/settings", user=user):
            auth = services.auth
            if identity is not None and identity.kind == "user":
                with ui.element("div").classes("w-full grid grid-cols-1 lg:grid-cols-2 gap-3"):
                    with viewer_may(ui.column().classes("gap-3")):  # one's own password is a viewer's too
                        AccountCard(auth, identity)
                    with ui.column().classes("gap-3"):
                        UsersCard(auth, identity)
            SettingsPanel(services, read_only=identity is not None and identity.read_only)
            with ui.element("div").classes("w-full grid grid-cols-1 lg:grid-cols-2 gap-3"):
                with ui.column().classes("gap-3"):
                    _binary(services)
                    _environment(services)
                await _system(shell)
        return None
