"""The worker behind one download: fetch each file with retries, check it, put it in place."""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from functools import partial
from pathlib import Path
from typing import Protocol

import httpx

from llamaman.core.runtime import RuntimeConfig
from llamaman.core.tables import ModelSource
from llamaman.downloads import hub
from llamaman.downloads.hub import DownloadError, DownloadUpstreamFailed, TransientError
from llamaman.downloads.job import FileState, Job
from llamaman.downloads.store import DownloadStore
from llamaman.downloads.transfer import TokenBucket, stream_to_part
from llamaman.library.catalog import ModelLibrary
from llamaman.scheduling.aliases import AliasStore

log = logging.getLogger(__name__)
# A failed attempt that still moved this much resets the retry count: long downloads over a flaky
# link should not run out of retries while they keep making progress.
_PROGRESS_RESET = 1024 * 1024


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} TB"


class JobOwner(Protocol):
    """What a worker asks of whoever owns its jobs: their paths, their records and their news.

    The download manager is one; the worker never needs the manager itself.
    """

    runtime: RuntimeConfig
    store: DownloadStore
    library: ModelLibrary
    aliases: AliasStore | None
    http: httpx.AsyncClient | None
    staging: Path
    backoff_base: float
    global_bucket: TokenBucket

    @property
    def endpoint(self) -> str: ...
    def model_path(self, job: Job) -> str | None: ...
    def final_path(self, job: Job, name: str) -> Path: ...
    def part_path(self, job: Job, name: str) -> Path: ...
    def rel_path(self, job: Job, name: str) -> str: ...
    def scan_local(self, job: Job) -> None: ...
    def check_disk(self, job: Job) -> None: ...
    def log(self, job: Job, message: str) -> None: ...
    def set_status(self, job: Job, new: str) -> None: ...
    def publish(self, job: Job, force: bool = False) -> None: ...


class Worker:
    def __init__(self, owner: JobOwner) -> None:
        self.m = owner

    async def run(self, job: Job) -> None:
        m, rec = self.m, job.record
        job.started_at = time.time()
        job.meter.reset()
        job.failure = None
        m.set_status(job, "downloading")
        try:
            m.scan_local(job)
            m.check_disk(job)
            token = rec.hf_token or m.runtime.current.hf_token
            for f in job.files:
                if f.state in ("verified", "placed"):
                    continue
                await self.fetch(job, f, token)
                await self.place_ready(job)
            await self.finish(job)
        except asyncio.CancelledError:
            rec.bytes_done = job.bytes_done
            m.store.save(rec)
            raise
        except DownloadError as exc:
            job.failure = exc
            self.fail(job, exc.message)
        except Exception as exc:
            log.exception("download %s failed", job.id)
            self.fail(job, f"unexpected error: {exc}")

    async def fetch(self, job: Job, f: FileState, token: str | None) -> None:
        m, rec = self.m, job.record
        assert m.http is not None
        part = m.part_path(job, f.name)
        url = hub.file_url(m.endpoint, rec.repo_id, f.name, rec.revision)
        failures = 0
        while True:
            before = f.done
            try:
                meta = await asyncio.to_thread(
                    hub.file_metadata, m.endpoint, rec.repo_id, f.name, rec.revision, token
                )
                f.size = meta.size if meta.size is not None else f.size
                expected = f.sha256 or meta.sha256
                f.state = "downloading"
                have = part.stat().st_size if part.exists() else 0
                m.log(job, f"{f.name}: " + (f"resuming at {human(have)}" if have else "starting"))
                digest = await stream_to_part(
                    m.http,
                    url,
                    hub.auth_headers(token),
                    part,
                    f.size,
                    partial(self.throttle, job),
                    partial(self.on_bytes, job, f),
                )
                if expected and digest != expected:
                    part.unlink(missing_ok=True)
                    f.done = 0
                    raise TransientError(
                        f"checksum mismatch (sha256 {digest[:12]}…, expected {expected[:12]}…)"
                    )
                f.sha256 = f.sha256 or digest
                f.state = "verified"
                m.log(job, f"{f.name}: complete ({human(f.done)}, sha256 {digest[:12]}…)")
                m.publish(job, force=True)
                return
            except TransientError as exc:
                if f.done - before >= _PROGRESS_RESET:
                    failures = 0
                failures += 1
                rec.attempts += 1
                retries = m.runtime.current.download_retries
                if failures > retries:
                    raise DownloadUpstreamFailed(
                        f"{f.name}: {exc} (gave up after {retries} retries)"
                    ) from None
                delay = min(60.0, m.backoff_base * 2 ** (failures - 1))
                m.log(job, f"{f.name}: {exc}; retry {failures} of {retries} in {delay:.1f}s")
                m.publish(job, force=True)
                await asyncio.sleep(delay)

    async def throttle(self, job: Job, n: int) -> None:
        await job.bucket.take(n)
        await self.m.global_bucket.take(n)

    def on_bytes(self, job: Job, f: FileState, done: int, new: int) -> None:
        f.done = done
        if new:
            job.meter.add(new)
        self.m.publish(job)

    async def place_ready(self, job: Job) -> None:
        """Move every whole group (a file, or all parts of a split) to its final name at once."""
        groups: dict[str, list[FileState]] = {}
        for f in job.files:
            groups.setdefault(hub.group_key(f.name), []).append(f)
        ready: list[FileState] = []
        for members in groups.values():
            if all(x.state in ("verified", "placed") for x in members):
                ready += [x for x in members if x.state == "verified"]
        if not ready:
            return
        await asyncio.to_thread(self.move_into_place, job, ready)
        for f in ready:
            f.state = "placed"
            self.m.log(job, f"placed {self.m.rel_path(job, f.name)}")
        await self.m.library.ascan()

    def move_into_place(self, job: Job, files: list[FileState]) -> None:
        """Rename staged files to their final names (same filesystem: atomic) and record their source."""
        m, rec = self.m, job.record
        sources = []
        for f in files:
            final = m.final_path(job, f.name)
            final.parent.mkdir(parents=True, exist_ok=True)
            part = m.part_path(job, f.name)
            if part.exists():
                part.replace(final)
            rel = m.rel_path(job, f.name)
            sources.append(
                ModelSource(model_path=rel, repo_id=rec.repo_id, filename=f.name, revision=rec.revision)
            )
        m.store.put_sources(sources)

    async def finish(self, job: Job) -> None:
        m, rec = self.m, job.record
        # Also records the source of files that were already in place before this download.
        await asyncio.to_thread(self.move_into_place, job, [f for f in job.files if f.state == "placed"])
        await asyncio.to_thread(shutil.rmtree, m.staging / job.id, True)
        if rec.alias and m.aliases is not None and (target := m.model_path(job)):
            await m.aliases.put(rec.alias, target)
            m.log(job, f"'{rec.alias}' now names {target}")
        rec.bytes_done = job.bytes_done
        m.log(job, f"done: {human(job.bytes_total)} in {len(job.files)} file(s)")
        m.set_status(job, "completed")

    def fail(self, job: Job, message: str) -> None:
        job.record.error = message
        job.record.bytes_done = job.bytes_done
        self.m.log(job, f"failed: {message}")
        self.m.set_status(job, "failed")
