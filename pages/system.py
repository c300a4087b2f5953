"""System: LlamaMan's own log (live, downloadable), benchmarks, backup and restore, model aliases.

Everything here is also REST (GET /api/logs/llamaman, /api/benchmarks, /api/backup, /api/restore,
Ollama's /api/copy for aliases); this page gives each a place in the UI."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from fastapi import Request
from fastapi.responses import Response
from nicegui import ui
from pydantic import ValidationError

from components import fmt
from components.a11y import named
from components.data_table import table
from components.log_view import LogView
from llamaman.api.backup_bundle import export_backup, restore_backup
from llamaman.api.system import APP_LOG
from llamaman.services import Services
from llamaman.telemetry.benchmarks import benchmark_dict
from llamaman.telemetry.loadtest import BenchmarkParams
from pages.shell import Shell, fail

BENCH_COLUMNS = [
    ("when", "Started"), ("model", "Model"), ("status", "Status"), ("setup", "Requests × concurrency"),
    ("rps", "Requests/s"), ("tps", "Tokens/s"), ("ttft", "TTFT p50"), ("errors", "Errors"),
]  # fmt: skip


def _bench_row(b: dict[str, Any]) -> dict[str, Any]:
    p, r = b.get("params") or {}, b.get("results") or {}
    ttft = (r.get("ttft_ms") or {}).get("p50") if isinstance(r.get("ttft_ms"), dict) else None
    return {
        "id": b["id"],
        "when": fmt.clock(b.get("created_at")),
        "model": b.get("model"),
        "status": b.get("status"),
        "setup": f"{p.get('requests', '?')} × {p.get('concurrency', '?')} ({p.get('target', 'proxy')})",
        "rps": r.get("requests_per_s") or fmt.DASH,
        "tps": r.get("tokens_per_s") or fmt.DASH,
        "ttft": f"{ttft:.0f} ms" if ttft else fmt.DASH,
        "errors": r.get("error") or r.get("errors") or 0,
    }


class AppLogPanel:
    def __init__(self) -> None:
        with ui.card().props("flat bordered").classes("w-full q-pa-md gap-2"):
            with ui.row().classes("w-full items-center"):
                ui.label("LlamaMan log").classes("text-h6")
                ui.label("The newest lines LlamaMan itself logged (INFO and up).").classes(
                    "text-sm opacity-75"
                )
                ui.space()
                ui.button("Download", icon="download", on_click=self.download).props("outline").mark(
                    "app-log-download"
                )
            self.seen = APP_LOG.count
            self.log = LogView(list(APP_LOG.lines)[-500:], max_lines=500, height="18rem")
        ui.timer(2.0, self.poll)

    def poll(self) -> None:
        new = min(APP_LOG.count - self.seen, len(APP_LOG.lines))
        self.seen = APP_LOG.count
        for line in list(APP_LOG.lines)[-new:] if new > 0 else []:
            self.log.push(line)

    def download(self) -> None:
        text = "\n".join(APP_LOG.lines) + "\n"
        ui.download.content(text.encode(), time.strftime("llamaman-%Y%m%d-%H%M%S.log"), "text/plain")


class BenchmarksPanel:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.runs = services.telemetry.benchmarks
        names = sorted({m.name for m in services.library.models if m.launchable})
        with ui.card().props("flat bordered").classes("w-full q-pa-md gap-2"):
            ui.label("Benchmarks").classes("text-h6")
            ui.label(
                "Sends many requests at once through the proxy (or straight to llama-server) and "
                "measures throughput; the requests show on the Activity page as 'benchmark <id>'."
            ).classes("text-sm opacity-75")
            with ui.row().classes("w-full items-start gap-3"):
                self.model = ui.select(names, value=next(iter(names), None), label="Model", with_input=True)
                self.model.props("outlined dense").classes("grow basis-48").mark("bench-model")
                self.requests = ui.number("Requests", value=50, min=1, step=1).props("outlined dense")
                self.concurrency = ui.number("Concurrency", value=4, min=1, step=1).props(
                    'outlined dense hint="requests in flight at once"'
                )
                self.prompt = ui.number("Prompt tokens", value=32, min=1, step=1).props("outlined dense")
                self.max_tokens = ui.number("Max tokens", value=32, min=1, step=1).props(
                    'outlined dense hint="generated per request"'
                )
                self.target = ui.select(
                    {"proxy": "Through the proxy", "direct": "Straight to llama-server"},
                    value="proxy",
                    label="Target",
                ).props("outlined dense")
                ui.button("Run", icon="speed", on_click=self.start).mark("bench-run")
            self.table = table(BENCH_COLUMNS, [])
        ui.timer(2.0, self.refresh)

    async def start(self) -> None:
        try:
            params = BenchmarkParams(
                model=self.model.value or "",
                requests=int(self.requests.value or 0),
                concurrency=int(self.concurrency.value or 0),
                prompt_tokens=int(self.prompt.value or 0),
                max_tokens=int(self.max_tokens.value or 0),
                target=self.target.value,
            )
        except ValidationError as exc:
            fail("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()))
            return
        if self.services.router.resolve(params.model) is None:
            fail(f"No model named {params.model!r}")
            return
        try:
            row = await self.runs.submit(params)
        except Exception as exc:
            fail(f"Could not start the benchmark: {exc}")
            return
        ui.notify(f"Benchmark {row.id} started", type="info")
        await self.refresh()

    async def refresh(self) -> None:
        rows = await asyncio.to_thread(self.runs.list, 20)
        self.table.rows = [_bench_row(benchmark_dict(b)) for b in rows]


class BackupPanel:
    def __init__(self, services: Services) -> None:
        self.services = services
        with ui.card().props("flat bordered").classes("w-full q-pa-md gap-2"):
            ui.label("Backup and restore").classes("text-h6")
            ui.label(
                "A backup holds where each model came from, presets and aliases (not the model files "
                "or keys). Restoring adds them back; a file that is not a LlamaMan backup is refused whole."
            ).classes("text-sm opacity-75")
            with ui.row().classes("w-full items-center gap-3"):
                ui.button("Download backup", icon="download", on_click=self.backup).mark("backup")
            # A pasted file rather than Quasar's uploader, whose file input has no accessible name.
            self.pasted = (
                ui.textarea(
                    "Backup to restore", placeholder="Paste the contents of a llamaman-backup-….json file"
                )
                .props("outlined dense rows=3")
                .classes("w-full lm-mono")
                .mark("restore-text")
            )
            ui.button("Restore", icon="restore", on_click=self.restore).props("outline").mark("restore")
            self.result = ui.label("").classes("text-sm").mark("restore-result")

    async def backup(self) -> None:
        data = await export_backup(self.services)
        name = time.strftime("llamaman-backup-%Y%m%d-%H%M%S.json")
        ui.download.content(json.dumps(data, indent=2).encode(), name, "application/json")

    async def restore(self) -> None:
        try:
            data = json.loads(self.pasted.value or "")
        except ValueError as exc:
            self.result.text = f"Not a JSON file: {exc}"
            fail(self.result.text)
            return
        try:
            outcome = await restore_backup(self.services, data)
        except Exception as exc:  # BackupError names the first bad field
            self.result.text = f"Refused: {getattr(exc, 'message', None) or exc}"
            fail(self.result.text)
            return
        self.result.text = "Restored: " + ", ".join(f"{k} {v}" for k, v in outcome.items())
        self.pasted.value = ""
        ui.notify(self.result.text, type="positive")


class AliasesPanel:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.aliases = services.aliases
        options = {m.rel_path: m.name for m in services.library.models}
        with ui.card().props("flat bordered").classes("w-full q-pa-md gap-2"):
            ui.label("Model aliases").classes("text-h6")
            ui.label(
                "Extra names for a model (what Ollama's 'ollama cp' makes): clients may ask for the alias."
            ).classes("text-sm opacity-75")
            with ui.row().classes("w-full items-start gap-3"):
                self.alias = (
                    ui.input("Alias", placeholder="e.g. gpt-4o").props("outlined dense").mark("alias-name")
                )
                self.target = ui.select(options, label="Model", with_input=True).props("outlined dense")
                self.target.classes("grow basis-48").mark("alias-target")
                ui.button("Add", icon="add", on_click=self.add).mark("alias-add")
            self.list = ui.column().classes("w-full gap-1")
        self.render()

    def render(self) -> None:
        self.list.clear()
        with self.list:
            if not self.aliases.aliases:
                ui.label("No aliases yet.").classes("text-sm opacity-75")
            for alias, target in sorted(self.aliases.aliases.items()):
                with ui.row().classes("w-full items-center no-wrap gap-2"):
                    ui.label(alias).classes("lm-mono text-sm")
                    ui.label(f"→ {target}").classes("lm-mono text-sm opacity-75 ellipsis min-w-0 grow")
                    rm = ui.button(icon="delete", on_click=lambda a=alias: self.remove(a))
                    named(
                        rm.props("flat round dense color=negative").mark(f"alias-remove-{alias}"),
                        f"Remove {alias}",
                    )

    async def add(self) -> None:
        alias, target = (self.alias.value or "").strip(), self.target.value
        if not alias or not target:
            fail("Give an alias and choose the model it names")
            return
        if self.services.library.find(alias) is not None:
            fail(f"{alias!r} is already a model's own name")
            return
        await self.aliases.put(alias, target)
        self.alias.value = ""
        ui.notify(f"{alias} now names {target}", type="positive")
        self.render()

    async def remove(self, alias: str) -> None:
        await self.aliases.delete(alias)
        self.render()


def register(services: Services, shell: Shell) -> None:
    @ui.page("/system")
    async def system_page(request: Request) -> Response | None:
        user, redirect = shell.guard(request)
        if redirect is not None:
            return redirect
        with shell.frame("/system", user=user):
            AppLogPanel()
            benchmarks = BenchmarksPanel(services)
            BackupPanel(services)
            AliasesPanel(services)
            await benchmarks.refresh()
        return None
