"""Download form and download cards (progress, speed, ETA, actions, log)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from nicegui import ui

from components import fmt
from components.a11y import named
from components.log_view import LogView

STATUS_COLORS = {
    "queued": "blue-grey",
    "downloading": "primary",
    "completed": "positive",
    "failed": "negative",
    "cancelled": "grey",
    "interrupted": "warning",
}


@dataclass
class DownloadRequest:
    repo_id: str
    filename: str | None  # None: the whole repository
    hf_token: str | None
    speed_limit_mbps: float


class DownloadForm:
    def __init__(
        self,
        *,
        on_submit: Callable[[DownloadRequest], Awaitable[bool]],
        on_list: Callable[[str, str | None], Awaitable[list[str] | None]],
    ) -> None:
        self.on_submit = on_submit
        self.on_list = on_list
        with ui.card().props("flat bordered").classes("w-full q-pa-md gap-2"):
            ui.label("Download from Hugging Face").classes("text-h6")
            with ui.row().classes("w-full items-start gap-3"):
                self.repo = (
                    ui.input("Repository", placeholder="org/model-GGUF", validation=self._repo_problem)
                    .props("outlined dense")
                    .classes("grow basis-64")
                    .mark("download-repo")
                )
                self.scope = ui.toggle({"file": "One file", "repo": "Whole repo"}, value="file")
                self.scope.props("no-caps dense")
            with ui.row().classes("w-full items-start gap-3") as self.file_row:
                self.file = (
                    ui.select([], label="File", with_input=True, new_value_mode="add-unique")
                    .props("outlined dense hide-dropdown-icon use-input input-debounce=0")
                    .classes("grow basis-64")
                    .mark("download-file")
                )
                self.list_btn = ui.button("List files", icon="list", on_click=self._list).props("outline")
            self.file_row.bind_visibility_from(self.scope, "value", backward=lambda v: v == "file")
            with ui.row().classes("w-full items-start gap-3"):
                self.token = (
                    ui.input("Token (gated or private repos)", password=True, password_toggle_button=True)
                    .props('outlined dense hint="blank: the token from Settings, if any"')
                    .classes("grow basis-64")
                )
                self.limit = (
                    ui.number("Speed limit", value=0, min=0)
                    .props('outlined dense suffix="Mbit/s" hint="0 = no limit (besides the global one)"')
                    .classes("w-48")
                )
            with ui.row().classes("w-full justify-end"):
                self.go = ui.button("Download", icon="download", on_click=self._submit)

    @staticmethod
    def _repo_problem(value: str | None) -> str | None:
        v = (value or "").strip()
        if v and v.count("/") != 1:
            return "use the form org/name"
        return None

    async def _list(self) -> None:
        repo = (self.repo.value or "").strip()
        if not repo:
            ui.notify("Enter a repository first", type="negative")
            return
        self.list_btn.props("loading")
        try:
            files = await self.on_list(repo, self.token.value or None)
        finally:
            self.list_btn.props(remove="loading")
        if files is not None:
            self.file.set_options(files, value=files[0] if len(files) == 1 else None)
            ui.notify(f"{len(files)} GGUF file(s) in {repo}", type="info")

    async def _submit(self) -> None:
        repo = (self.repo.value or "").strip()
        if not repo or self._repo_problem(repo):
            ui.notify("Enter a repository as org/name", type="negative")
            return
        filename = None
        if self.scope.value == "file":
            filename = (self.file.value or "").strip() or None
            if filename is None:
                ui.notify("Choose a file (List files), or download the whole repo", type="negative")
                return
        req = DownloadRequest(
            repo, filename, (self.token.value or "").strip() or None, float(self.limit.value or 0)
        )
        self.go.props("loading")
        try:
            if await self.on_submit(req):
                self.token.value = ""
        finally:
            self.go.props(remove="loading")


Action = Callable[[str], Awaitable[None]]


class DownloadCard:
    def __init__(
        self,
        view: dict[str, Any],
        *,
        logs: Iterable[str],
        on_cancel: Action,
        on_resume: Action,
        on_remove: Action,
    ) -> None:
        self.id: str = view["id"]
        self.view = dict(view)
        with (
            ui.card()
            .props("flat bordered")
            .classes("w-full q-pa-sm gap-1")
            .mark(f"download-{self.id}") as self.card
        ):
            with ui.row().classes("w-full items-center no-wrap gap-2"):
                self.badge = ui.badge("", color="grey").classes("text-sm q-px-sm")
                with ui.column().classes("gap-0 grow min-w-0"):
                    self.title = ui.label("").classes("text-subtitle1 text-weight-medium ellipsis w-full")
                    self.sub = ui.label("").classes("text-xs opacity-75 lm-mono ellipsis w-full")
                self.cancel_btn = ui.button(icon="cancel", on_click=lambda: on_cancel(self.id))
                self.cancel_btn.props("flat round dense color=warning")
                named(self.cancel_btn, "Cancel (removes partial data)")
                self.resume_btn = ui.button(icon="play_arrow", on_click=lambda: on_resume(self.id))
                named(self.resume_btn.props("flat round dense color=primary"), "Resume")
                rm = ui.button(icon="delete", on_click=lambda: on_remove(self.id))
                named(rm.props("flat round dense color=negative"), "Remove from the list")
            self.bar = ui.linear_progress(value=0, show_value=False, size="10px").props(
                'rounded aria-label="Download progress"'
            )
            with ui.row().classes("w-full gap-4 text-sm lm-mono"):
                self.bytes = ui.label("")
                self.speed = ui.label("")
                self.eta = ui.label("")
                self.file = ui.label("").classes("opacity-75 ellipsis")
            self.error = ui.label("").classes("text-sm text-negative")
            with ui.expansion("Log", icon="article").classes("w-full").props("dense"):
                self.log = LogView(logs, height="8rem")
        self.update(view)

    def update(self, v: dict[str, Any]) -> None:
        self.view.update(v)
        v = self.view
        status = v.get("status", "")
        self.badge.text = status
        self.badge.props["color"] = STATUS_COLORS.get(status, "grey")
        self.title.text = f"{v.get('repo_id', '')}" + (
            f" / {v['filename']}" if v.get("filename") else " (whole repo)"
        )
        files = v.get("files") or []
        self.sub.text = (
            f"{len(files)} file(s) → {v.get('dest_dir') or v.get('repo_id', '')}"
            + (f" · limit {v['speed_limit_mbps']:g} Mbit/s" if v.get("speed_limit_mbps") else "")
            + (f" · attempt {v['attempts']}" if v.get("attempts") else "")
        )
        done, total = v.get("bytes_done", 0), v.get("bytes_total", 0)
        self.bar.value = fmt.percent(done, total)
        self.bar.props["color"] = STATUS_COLORS.get(status, "primary")
        pct = f" ({v.get('progress', 0):.1f}%)" if total else ""
        self.bytes.text = f"{fmt.size(done)} / {fmt.size(total)}{pct}"
        active = status in ("queued", "downloading")
        self.speed.text = fmt.speed(v.get("speed_bps")) if status == "downloading" else ""
        self.eta.text = (
            f"ETA {fmt.duration(v['eta_s'])}" if status == "downloading" and v.get("eta_s") else ""
        )
        self.file.text = v.get("current_file") or ""
        self.error.text = v.get("error") or ""
        self.error.visible = bool(v.get("error"))
        self.cancel_btn.visible = active
        self.resume_btn.visible = status in ("failed", "cancelled", "interrupted")

    def push_log(self, line: str) -> None:
        self.log.push(line)
