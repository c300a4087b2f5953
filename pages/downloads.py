"""The downloads page: start a Hugging Face download, follow its progress live, cancel or remove it."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import Response
from nicegui import ui

from components.downloads import DownloadCard, DownloadForm, DownloadRequest
from llamaman.services import Services
from pages.shell import Shell, fail, subscribe


def _message(exc: Exception) -> str:
    return getattr(exc, "message", None) or str(exc) or exc.__class__.__name__


class DownloadsPanel:
    def __init__(self, services: Services, manager: Any) -> None:
        self.services = services
        self.manager = manager
        self.cards: dict[str, DownloadCard] = {}
        DownloadForm(on_submit=self.submit, on_list=self.list_files)
        with ui.row().classes("w-full items-center"):
            ui.label("Downloads").classes("text-h6")
            self.summary = ui.label("").classes("text-sm opacity-75")
        self.empty = ui.label("No downloads yet.").classes("text-sm opacity-75")
        self.list = ui.column().classes("w-full gap-2")
        self.sync()
        subscribe(services, "download.", self.on_event, resync=self.sync)

    def _add(self, job: Any, first: bool = False) -> None:
        with self.list:
            card = DownloadCard(
                job.view(),
                logs=list(job.logs),
                on_cancel=self.cancel,
                on_resume=self.resume,
                on_remove=self.remove,
            )
        if first:
            card.card.move(self.list, target_index=0)
        self.cards[job.id] = card

    def _counts(self) -> None:
        jobs = self.manager.list()
        self.empty.visible = not jobs
        active = sum(1 for j in jobs if j.active)
        self.summary.text = f"{len(jobs)} in all, {active} active" if jobs else ""

    def sync(self) -> None:
        jobs = {j.id: j for j in self.manager.list()}
        for gone in [i for i in self.cards if i not in jobs]:
            self.cards.pop(gone).card.delete()
        for job in jobs.values():
            if job.id in self.cards:
                self.cards[job.id].update(job.view())
            else:
                self._add(job)
        self._counts()

    def on_event(self, ev: Any) -> None:
        download_id = ev.data.get("id")
        if ev.topic == "download.removed":
            card = self.cards.pop(download_id, None)
            if card is not None:
                card.card.delete()
            self._counts()
            return
        job = self.manager.jobs.get(download_id)
        if job is None:
            return
        card = self.cards.get(download_id)
        if card is None:
            self._add(job, first=True)
            self._counts()
            return
        if ev.topic == "download.log":
            card.push_log(ev.data.get("line", ""))
        elif ev.topic == "download.progress":
            card.update({k: v for k, v in ev.data.items() if k != "id"})
        else:
            card.update(job.view())
            self._counts()

    # ---- actions -----------------------------------------------------------------------------
    async def list_files(self, repo: str, token: str | None) -> list[str] | None:
        try:
            listing = await self.manager.listing(repo, token=token)
        except Exception as exc:
            fail(f"Could not list {repo}: {_message(exc)}")
            return None
        names = [f.name for f in listing.files if f.name.lower().endswith(".gguf")]
        if not names:
            fail(f"{repo} has no GGUF files")
        return names

    async def submit(self, req: DownloadRequest) -> bool:
        try:
            job = await self.manager.create(
                req.repo_id, req.filename, hf_token=req.hf_token, speed_limit_mbps=req.speed_limit_mbps
            )
        except Exception as exc:
            fail(f"Download failed: {_message(exc)}")
            return False
        if job.id not in self.cards:
            self._add(job, first=True)
            self._counts()
        ui.notify(f"Download of {req.repo_id} queued", type="positive")
        return True

    async def _act(self, what: str, download_id: str) -> None:
        try:
            await getattr(self.manager, what)(download_id)
        except Exception as exc:
            fail(f"{what.capitalize()} failed: {_message(exc)}")
            return
        job = self.manager.jobs.get(download_id)
        if job is not None and download_id in self.cards:
            self.cards[download_id].update(job.view())
        self._counts()

    async def cancel(self, download_id: str) -> None:
        await self._act("cancel", download_id)

    async def resume(self, download_id: str) -> None:
        await self._act("resume", download_id)

    async def remove(self, download_id: str) -> None:
        await self._act("remove", download_id)


def register(services: Services, shell: Shell) -> None:
    @ui.page("/downloads")
    async def downloads_page(request: Request) -> Response | None:
        user, redirect = shell.guard(request)
        if redirect is not None:
            return redirect
        with shell.frame("/downloads", user=user):
            DownloadsPanel(services, services.downloads)
        return None
