"""One download as the manager tracks it: its database record plus live, in-memory state."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from llamaman.core.errors import LlamaManError
from llamaman.core.tables import Download
from llamaman.downloads.transfer import SpeedMeter, TokenBucket, mbps_to_bytes

ACTIVE = ("queued", "downloading")
TERMINAL = ("completed", "failed", "cancelled")
# Stopped without finishing (a restart, a crashed worker): picked up again from the bytes on disk.
RESUMABLE = ("queued", "downloading", "interrupted")


@dataclass
class FileState:
    name: str
    size: int | None = None
    sha256: str | None = None
    done: int = 0
    # pending → downloading → verified (whole and checked, still staged) → placed (under its final name)
    state: str = "pending"

    def view(self) -> dict[str, Any]:
        return {"name": self.name, "size": self.size or 0, "done": self.done, "state": self.state}


class Job:
    def __init__(self, record: Download, files: list[FileState]) -> None:
        self.record = record
        self.files = files
        self.task: asyncio.Task[None] | None = None
        self.logs: deque[str] = deque(maxlen=500)
        self.meter = SpeedMeter()
        self.bucket = TokenBucket(lambda: mbps_to_bytes(self.record.speed_limit_mbps))
        self.last_publish = 0.0
        self.last_persist = 0.0
        self.finished = asyncio.Event()
        self.started_at: float | None = None
        # Why it failed, as a kind a surface can answer with (the record keeps only the message).
        self.failure: LlamaManError | None = None

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def status(self) -> str:
        return self.record.status

    @property
    def active(self) -> bool:
        return self.record.status in ACTIVE

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()

    @property
    def bytes_done(self) -> int:
        return sum(f.done for f in self.files)

    @property
    def bytes_total(self) -> int:
        known = sum(f.size or 0 for f in self.files)
        return known if all(f.size is not None for f in self.files) else max(known, self.record.bytes_total)

    def remaining(self) -> int:
        """Bytes still to come (staged bytes are on disk already)."""
        return max(0, self.bytes_total - self.bytes_done)

    def progress(self) -> dict[str, Any]:
        done, total = self.bytes_done, self.bytes_total
        speed = self.meter.rate() if self.record.status == "downloading" else 0.0
        current = next((f.name for f in self.files if f.state == "downloading"), None)
        return {
            "id": self.id,
            "status": self.record.status,
            "bytes_done": done,
            "bytes_total": total,
            "progress": round(100 * done / total, 2) if total else 0.0,
            "speed_bps": round(speed),
            "speed_mbps": round(speed * 8 / 1_000_000, 3),
            "eta_s": round((total - done) / speed, 1) if speed > 0 and total > done else None,
            "current_file": current,
        }

    def view(self) -> dict[str, Any]:
        r = self.record
        return {
            **self.progress(),
            "repo_id": r.repo_id,
            "filename": r.filename,
            "revision": r.revision,
            "dest_dir": r.dest_dir,
            "alias": r.alias,
            "speed_limit_mbps": r.speed_limit_mbps,
            "files": [f.view() for f in self.files],
            "attempts": r.attempts,
            "error": r.error,
            "has_token": bool(r.hf_token),
            "created_at": r.created_at,
            "started_at": self.started_at,
            "finished_at": r.finished_at,
        }

    def log(self, message: str) -> str:
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}"
        self.logs.append(line)
        return line
