"""Model downloads from Hugging Face: queue, throttle, retry, resume, and place files atomically.

Bytes go to ``MODELS_DIR/.downloads/<id>/<file>.part`` (a hidden folder the library skips) and are
renamed to their final name only once whole and checked, so a half file never looks like a model.
The database record and the part files are all a download needs to resume after a restart.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import shutil
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from llamaman.core.config import Settings
from llamaman.core.db import Database
from llamaman.core.errors import UpstreamFailed
from llamaman.core.events import EventBus
from llamaman.core.runtime import RuntimeConfig
from llamaman.core.tables import Download
from llamaman.downloads import hub
from llamaman.downloads.cleanup import CleanupReport, run_cleanup
from llamaman.downloads.hub import (
    DownloadConflict,
    DownloadError,
    DownloadInvalid,
    DownloadNotFound,
    DownloadStorageFull,
    RepoListing,
)
from llamaman.downloads.job import RESUMABLE, TERMINAL, FileState, Job
from llamaman.downloads.store import DownloadStore
from llamaman.downloads.transfer import TokenBucket, mbps_to_bytes
from llamaman.downloads.worker import Worker, human
from llamaman.library.catalog import ModelLibrary
from llamaman.scheduling.aliases import AliasStore

if TYPE_CHECKING:
    from llamaman.instances.supervisor import Supervisor

__all__ = ["DownloadError", "DownloadManager", "Job"]

logger = logging.getLogger(__name__)
STAGING = ".downloads"


class DownloadManager:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        events: EventBus,
        library: ModelLibrary,
        runtime: RuntimeConfig,
        aliases: AliasStore | None = None,
        supervisor: Supervisor | None = None,
        *,
        max_parallel: int = 2,
    ) -> None:
        self.settings = settings
        self.db = db
        self.events = events
        self.library = library
        self.runtime = runtime
        self.aliases = aliases
        self.supervisor = supervisor
        self.max_parallel = max_parallel
        self.models_dir = library.models_dir
        self.staging = self.models_dir / STAGING
        self.jobs: dict[str, Job] = {}
        self.global_bucket = TokenBucket(lambda: mbps_to_bytes(runtime.current.download_speed_limit_mbps))
        # Replaceable so tests can simulate a full disk.
        self.disk_free: Callable[[Path], int] = lambda p: shutil.disk_usage(p).free
        self.backoff_base = 2.0
        self.progress_interval = 0.25
        self.persist_interval = 2.0
        self.cleanup_interval = 300.0
        self.http: httpx.AsyncClient | None = None
        self._queue: deque[str] = deque()
        self.store = DownloadStore(db, lambda download_id: download_id in self.jobs, settings.node_name)
        self.worker = Worker(self)
        self._cleaner: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def endpoint(self) -> str:
        return hub.endpoint_of(self.settings.hf_endpoint)

    # ---- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        self._stopping = False
        # No overall timeout (files are large); a stalled read fails after a minute and is retried.
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(60, connect=15))
        self.store.start()
        for rec in await self.store.load():
            job = Job(rec, [FileState(n) for n in rec.files or []])
            self.jobs[rec.id] = job
            if rec.status in TERMINAL:
                job.finished.set()
            elif rec.status in RESUMABLE:
                self.log(job, f"resuming after a restart (was {rec.status})")
                self._requeue(job)
        await asyncio.to_thread(self._drop_orphan_staging)
        self._pump()
        self._cleaner = asyncio.create_task(self._cleanup_loop())

    async def stop(self) -> None:
        """Stop transfers without losing them: their records stay active and resume at next start."""
        self._stopping = True
        if self._cleaner:
            self._cleaner.cancel()
        running = [j for j in self.jobs.values() if j.running]
        for j in running:
            assert j.task is not None
            j.task.cancel()
        await asyncio.gather(*(j.task for j in running if j.task), return_exceptions=True)
        for j in running:
            j.record.bytes_done = j.bytes_done
            self.store.save(j.record)
        await self.store.stop()
        if self.http:
            await self.http.aclose()

    # ---- queries -----------------------------------------------------------------------------
    def get(self, download_id: str) -> Job:
        job = self.jobs.get(download_id)
        if job is None:
            raise DownloadNotFound(f"download {download_id!r} not found")
        return job

    def list(self) -> list[Job]:
        return sorted(self.jobs.values(), key=lambda j: j.record.created_at, reverse=True)

    async def wait(self, download_id: str, timeout: float | None = None) -> Job:
        job = self.get(download_id)
        await asyncio.wait_for(job.finished.wait(), timeout)
        return job

    async def listing(self, repo_id: str, revision: str = "main", token: str | None = None) -> RepoListing:
        repo_id = hub.check_repo_id(repo_id)
        token = token or self.runtime.current.hf_token
        return await asyncio.to_thread(hub.list_repo, self.endpoint, repo_id, revision, token)

    # ---- create ------------------------------------------------------------------------------
    async def create(
        self,
        repo_id: str,
        filename: str | None = None,
        *,
        revision: str = "main",
        hf_token: str | None = None,
        speed_limit_mbps: float = 0,
        gguf_only: bool = True,
        dest_dir: str | None = None,
        alias: str | None = None,
        files: builtins.list[str] | None = None,
        listing: RepoListing | None = None,
        attach: bool = False,
    ) -> Job:
        """Queue a download; raises a DownloadError (of the kind that says why) when it cannot be done.

        ``files`` names the repo files explicitly (an Ollama pull's pick); otherwise ``filename``
        picks one file (every part of a split) and no filename the whole repo. With ``attach`` a
        download already fetching the same files is returned instead of refusing a duplicate.
        """
        repo_id = hub.check_repo_id(repo_id)
        if speed_limit_mbps < 0:
            raise DownloadInvalid("speed_limit_mbps must not be negative")
        if filename:
            hub.check_rel_path(filename)
        dest = dest_dir.strip("/") if dest_dir else repo_id
        hub.check_rel_path(dest, "destination folder")
        if listing is None:
            try:
                listing = await self.listing(repo_id, revision or "main", hf_token)
            except DownloadError as exc:
                self.record_failure(repo_id, exc, filename=filename, revision=revision, alias=alias)
                raise
        if files is not None:
            remote = []
            for name in files:
                f = listing.get(name)
                if f is None:
                    raise DownloadNotFound(f"{repo_id} has no file {name!r}")
                remote.append(f)
        else:
            remote = hub.pick_files(listing, filename, gguf_only=gguf_only)
        for f in remote:
            # A repo's own file names are as untrusted as a user's: each becomes a path here.
            hub.check_rel_path(f.name)
        targets = {hub.inside(self.models_dir, dest, f.name) for f in remote}
        for job in self.jobs.values():
            if job.active and targets & set(self.targets(job)):
                if attach:
                    return job
                raise DownloadConflict(f"these files are already being downloaded (download {job.id})")
        states = [FileState(f.name, f.size, f.sha256) for f in remote]
        record = Download(
            repo_id=repo_id,
            filename=filename or None,
            # Pinned to the commit: a resume days later must fetch the very same bytes.
            revision=listing.sha,
            speed_limit_mbps=speed_limit_mbps,
            files=[f.name for f in remote],
            bytes_total=sum(f.size or 0 for f in remote),
            hf_token=hf_token or None,
            dest_dir=dest,
            alias=alias,
        )
        job = Job(record, states)
        self.scan_local(job)
        self.check_disk(job)
        self.jobs[record.id] = job
        names = ", ".join(f.name for f in remote[:5])
        if len(remote) > 5:
            names += f" and {len(remote) - 5} more"
        self.log(job, f"queued {repo_id}@{listing.sha[:10]}: {names} ({human(job.bytes_total)})")
        self._requeue(job)
        self._pump()
        return job

    def record_failure(
        self,
        repo_id: str,
        exc: DownloadError,
        *,
        filename: str | None = None,
        revision: str = "main",
        alias: str | None = None,
    ) -> Job | None:
        """Keep a download the hub failed before any file was chosen (unreachable, erroring) as a
        failed row, so the reason stays on the downloads list, not only in the answer to one
        request. A request the hub answered (no such repo, no access) leaves no row: that answer
        is the whole story, and a typo should not linger in the list."""
        if not isinstance(exc, UpstreamFailed):
            return None
        record = Download(
            repo_id=repo_id,
            filename=filename or None,
            revision=(revision or "main")[:64],
            status="failed",
            error=exc.message,
            finished_at=time.time(),
            alias=alias,
        )
        job = Job(record, [])
        job.failure = exc
        job.finished.set()
        self.jobs[record.id] = job
        self.log(job, f"failed: {exc.message}")
        self.store.save(record)
        self.events.publish("download.state", old=None, new="failed", **job.progress())
        return job

    # ---- control -----------------------------------------------------------------------------
    async def cancel(self, download_id: str) -> Job:
        """Stop a download and delete its partial data (files already in place are kept)."""
        job = self.get(download_id)
        if job.status in ("completed", "cancelled"):
            return job
        await self._halt(job)
        for f in job.files:
            if f.state != "placed":
                f.done, f.state = 0, "pending"
        self.log(job, "cancelled; partial data removed")
        self.set_status(job, "cancelled")
        return job

    async def resume(self, download_id: str) -> Job:
        job = self.get(download_id)
        if job.active:
            return job
        if job.status == "completed":
            raise DownloadConflict("this download is already complete")
        if not job.files:
            raise DownloadConflict(
                "this download failed before any file was chosen: start it again from the repo"
            )
        job.record.error = None
        job.record.attempts = 0
        job.record.finished_at = None
        self.scan_local(job)
        self.check_disk(job)
        self.log(job, "resumed by request")
        self._requeue(job)
        self._pump()
        return job

    async def remove(self, download_id: str) -> None:
        """Forget a download; a running one is cancelled first (its partial data goes too)."""
        job = self.get(download_id)
        await self._halt(job)
        del self.jobs[download_id]
        await self.store.delete(download_id)
        self.events.publish("download.removed", id=download_id)

    async def _halt(self, job: Job) -> None:
        with contextlib.suppress(ValueError):
            self._queue.remove(job.id)
        if job.task is not None and not job.task.done():
            job.task.cancel()
            await asyncio.wait([job.task])
        await asyncio.to_thread(shutil.rmtree, self.staging / job.id, True)

    def mark_orphans(self) -> builtins.list[str]:
        """Active records with no worker behind them (it died) become ``interrupted``."""
        marked = []
        for job in self.jobs.values():
            if job.active and not job.running and job.id not in self._queue:
                self.log(job, "the download stopped unexpectedly; it can be resumed")
                self.set_status(job, "interrupted")
                marked.append(job.id)
        return marked

    # ---- the worker --------------------------------------------------------------------------
    def _requeue(self, job: Job) -> None:
        job.record.status = "queued"
        job.finished.clear()
        if job.id not in self._queue:
            self._queue.append(job.id)
        self.store.save(job.record)
        self.events.publish("download.state", old=None, new="queued", **job.progress())

    def _pump(self) -> None:
        if self._stopping or self.http is None:
            return
        while self._queue and sum(1 for j in self.jobs.values() if j.running) < self.max_parallel:
            job = self.jobs.get(self._queue.popleft())
            if job is None or job.status != "queued":
                continue
            job.task = asyncio.create_task(self.worker.run(job), name=f"download-{job.id}")
            job.task.add_done_callback(lambda _: self._pump())

    # ---- helpers -----------------------------------------------------------------------------
    def model_path(self, job: Job) -> str | None:
        """The file to launch among a finished download's files: the first part of the first model."""
        models = sorted(f.name for f in job.files if hub.is_gguf(f.name) and not hub.is_projector(f.name))
        return self.rel_path(job, models[0]) if models else None

    def final_path(self, job: Job, name: str) -> Path:
        return hub.inside(self.models_dir, job.record.dest_dir or job.record.repo_id, name)

    def part_path(self, job: Job, name: str) -> Path:
        return hub.inside(self.staging / job.id, name + ".part")

    def rel_path(self, job: Job, name: str) -> str:
        return self.final_path(job, name).relative_to(self.models_dir).as_posix()

    def targets(self, job: Job) -> builtins.list[Path]:
        return [self.final_path(job, f.name) for f in job.files]

    def scan_local(self, job: Job) -> None:
        """Take stock of what is on disk: staged bytes count as done, a whole final file as placed."""
        for f in job.files:
            part, final = self.part_path(job, f.name), self.final_path(job, f.name)
            if part.exists():
                f.done, f.state = part.stat().st_size, "pending"
            elif final.exists() and (f.size is None or final.stat().st_size == f.size):
                f.done, f.state = final.stat().st_size, "placed"
                f.size = f.done
            else:
                f.done, f.state = 0, "pending"

    def check_disk(self, job: Job) -> None:
        need = job.remaining()
        others = sum(j.remaining() for j in self.jobs.values() if j.active and j is not job)
        self.models_dir.mkdir(parents=True, exist_ok=True)
        free = self.disk_free(self.models_dir)
        if need and need + others > free:
            queued = f" plus {human(others)} for downloads already queued" if others else ""
            raise DownloadStorageFull(
                f"not enough disk space in {self.models_dir}: this download needs {human(need)}{queued}, "
                f"but only {human(free)} is free"
            )

    def log(self, job: Job, message: str) -> None:
        line = job.log(message)
        logger.info("download %s: %s", job.id, message)
        self.events.publish("download.log", id=job.id, line=line)

    def set_status(self, job: Job, new: str) -> None:
        old, job.record.status = job.record.status, new
        if new in ("completed", "cancelled"):
            job.record.hf_token = None  # only a resume needs it; do not keep a secret longer than that
        if new in TERMINAL or new == "interrupted":
            job.record.finished_at = time.time() if new in TERMINAL else None
            job.finished.set()
        self.publish(job, force=True)
        self.events.publish("download.state", old=old, new=new, **job.progress())

    def publish(self, job: Job, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - job.last_publish >= self.progress_interval:
            job.last_publish = now
            self.events.publish("download.progress", **job.progress())
        if force or now - job.last_persist >= self.persist_interval:
            job.last_persist = now
            job.record.bytes_done = job.bytes_done
            job.record.bytes_total = job.bytes_total
            self.store.save(job.record)

    # ---- cleanup -----------------------------------------------------------------------------
    async def cleanup_once(self, now: float | None = None) -> CleanupReport:
        sup = self.supervisor
        return await run_cleanup(
            self.mark_orphans,
            self.forget_finished,
            sup.forget_stopped if sup is not None else None,
            self.runtime.current.cleanup_hours,
            now,
        )

    async def forget_finished(self, cutoff: float) -> builtins.list[str]:
        """Remove the finished downloads whose end is older than ``cutoff`` (epoch seconds)."""
        gone = []
        for job in list(self.jobs.values()):
            finished = job.record.finished_at
            if job.status in TERMINAL and finished is not None and finished < cutoff:
                await self.remove(job.id)
                gone.append(job.id)
        return gone

    async def _cleanup_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cleanup_interval)
            try:
                await self.cleanup_once()
            except Exception:
                logger.exception("periodic cleanup failed")

    def _drop_orphan_staging(self) -> None:
        if self.staging.is_dir():
            for d in self.staging.iterdir():
                if d.name not in self.jobs:
                    shutil.rmtree(d, ignore_errors=True)

    def views(self) -> builtins.list[dict[str, Any]]:
        return [j.view() for j in self.list()]
