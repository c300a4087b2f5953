"""A llama-server's log file kept to a size (rotation), and what its process group uses."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from pathlib import Path

import psutil

log = logging.getLogger(__name__)


def shift_backups(log_path: Path, backups: int) -> None:
    """name.log.N-1 → name.log.N, ..., name.log → name.log.1 (no server holds the file)."""
    if backups <= 0:
        with contextlib.suppress(OSError):
            log_path.unlink()
        return
    for n in range(backups, 1, -1):
        older = log_path.with_name(f"{log_path.name}.{n - 1}")
        if older.exists():
            os.replace(older, log_path.with_name(f"{log_path.name}.{n}"))
    if log_path.exists():
        os.replace(log_path, log_path.with_name(f"{log_path.name}.1"))


def copy_truncate(log_path: Path, backups: int, offset: int) -> bytes | None:
    """Cap the log of a running server: the server keeps its file open in append mode, so the
    file is copied to name.log.1 and emptied in place; the server's next write lands at the start.
    Lines it writes between the copy and the truncation are lost (as with logrotate's copytruncate).
    Returns what the server wrote past ``offset`` before the copy; None when nothing was rotated."""
    first = log_path.with_name(f"{log_path.name}.1")
    try:
        for n in range(backups, 1, -1):
            older = log_path.with_name(f"{log_path.name}.{n - 1}")
            if older.exists():
                os.replace(older, log_path.with_name(f"{log_path.name}.{n}"))
        if backups > 0:
            shutil.copyfile(log_path, first)
        with open(log_path, "r+b") as fh:
            fh.truncate(0)
    except OSError as exc:
        log.warning("could not rotate %s: %s", log_path, exc)
        return None
    # What the server wrote after our last read went into the copy: the caller's ring gets it too.
    rest = b""
    if backups > 0:
        with contextlib.suppress(OSError), open(first, "rb") as fh:
            fh.seek(offset)
            rest = fh.read()
    return rest


def group_usage(pid: int | None) -> dict[str, float]:
    """CPU % and RSS of a whole process group (the server and any children)."""
    if pid is None:
        return {"cpu_percent": 0.0, "rss_bytes": 0}
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
        return {
            "cpu_percent": sum(p.cpu_percent(None) for p in procs),
            "rss_bytes": sum(p.memory_info().rss for p in procs),
        }
    except psutil.Error:
        return {"cpu_percent": 0.0, "rss_bytes": 0}
