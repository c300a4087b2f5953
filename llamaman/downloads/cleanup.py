"""Periodic housekeeping: forget old finished downloads and stopped instance records.

``cleanup_hours`` (runtime settings) is the age after which a record goes; 0 keeps everything.
Active downloads whose worker died are marked ``interrupted`` (resumable) whatever the setting.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from llamaman.core.state import InstanceState
from llamaman.downloads.job import TERMINAL

if TYPE_CHECKING:
    from llamaman.downloads.manager import DownloadManager
    from llamaman.instances.supervisor import Supervisor

log = logging.getLogger(__name__)


@dataclass
class CleanupReport:
    downloads_removed: list[str] = field(default_factory=list)
    instances_removed: list[str] = field(default_factory=list)
    interrupted: list[str] = field(default_factory=list)


async def run_cleanup(
    downloads: DownloadManager,
    supervisor: Supervisor | None,
    hours: float,
    now: float | None = None,
) -> CleanupReport:
    report = CleanupReport(interrupted=downloads.mark_orphans())
    if hours <= 0:
        return report
    cutoff = (now if now is not None else time.time()) - hours * 3600
    for job in list(downloads.jobs.values()):
        finished = job.record.finished_at
        if job.status in TERMINAL and finished is not None and finished < cutoff:
            await downloads.remove(job.id)
            report.downloads_removed.append(job.id)
    if supervisor is not None:
        for m in supervisor.list():
            stopped = m.record.stopped_at
            if m.state == InstanceState.STOPPED and stopped is not None and stopped < cutoff:
                await supervisor.remove(m.id)
                report.instances_removed.append(m.id)
    if report.downloads_removed or report.instances_removed:
        log.info(
            "cleanup: forgot %d download(s) and %d stopped instance(s) older than %g h",
            len(report.downloads_removed),
            len(report.instances_removed),
            hours,
        )
    return report
