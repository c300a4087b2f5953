"""Periodic housekeeping: forget old finished downloads and stopped instance records.

``cleanup_hours`` (runtime settings) is the age after which a record goes; 0 keeps everything.
Active downloads whose worker died are marked ``interrupted`` (resumable) whatever the setting.
Each owner forgets its own records: this module only says when, and for what age.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

# Forget the finished records older than the cutoff (epoch seconds); answer their ids.
Forget = Callable[[float], Awaitable[list[str]]]


@dataclass
class CleanupReport:
    downloads_removed: list[str] = field(default_factory=list)
    instances_removed: list[str] = field(default_factory=list)
    interrupted: list[str] = field(default_factory=list)


async def run_cleanup(
    mark_orphans: Callable[[], list[str]],
    forget_downloads: Forget,
    forget_instances: Forget | None,
    hours: float,
    now: float | None = None,
) -> CleanupReport:
    report = CleanupReport(interrupted=mark_orphans())
    if hours <= 0:
        return report
    cutoff = (now if now is not None else time.time()) - hours * 3600
    report.downloads_removed = await forget_downloads(cutoff)
    if forget_instances is not None:
        report.instances_removed = await forget_instances(cutoff)
    if report.downloads_removed or report.instances_removed:
        log.info(
            "cleanup: forgot %d download(s) and %d stopped instance(s) older than %g h",
            len(report.downloads_removed),
            len(report.instances_removed),
            hours,
        )
    return report
