"""Number formatting shared by the panels, so sizes and durations read the same everywhere."""

from __future__ import annotations

import time

# Shown where a number is unknown (an en dash, written as an escape to keep the source ASCII-plain).
DASH = "\u2013"


def size(n: float | int | None) -> str:
    if n is None:
        return DASH
    value = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(value) < 1024 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"


def duration(seconds: float | None) -> str:
    if seconds is None or seconds < 0:
        return DASH
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def count(n: int | None) -> str:
    if n is None:
        return DASH
    if n >= 1_000_000:
        return f"{n / 1_000_000:.1f}M"
    if n >= 10_000:
        return f"{n / 1000:.0f}k"
    return str(n)


def ago(ts: float | None) -> str:
    if not ts:
        return "never"
    return duration(time.time() - ts) + " ago"


def clock(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else DASH


def speed(bytes_per_s: float | None) -> str:
    return f"{size(bytes_per_s)}/s" if bytes_per_s else DASH


def percent(part: float, whole: float) -> float:
    """A 0..1 fraction for progress bars, safe for a zero or unknown total."""
    if not whole or whole <= 0:
        return 0.0
    return max(0.0, min(1.0, part / whole))
