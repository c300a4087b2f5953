"""The syntax of memory limits and reserves: ``cpu=48GiB,gpu0=22GiB`` or a plain size.

Kept in ``core`` because both the environment settings and the runtime settings validate it; the
scheduler reads the parsed form.
"""

from __future__ import annotations

import re

_UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "t": 1000**4,
    "tb": 1000**4,
    "tib": 1024**4,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
_DEVICE = re.compile(r"^(cpu|gpu\d{1,2})$")
# A bare size names the host's memory: the one device every box has.
DEFAULT_DEVICE = "cpu"


def parse_size(text: str) -> int:
    """Bytes in ``text`` (``22GiB``, ``1.5G``, ``1048576``); ValueError says what is wrong."""
    m = _SIZE.match(text)
    if m is None:
        raise ValueError(f"'{text}' is not a size (examples: 22GiB, 1.5GB, 1048576)")
    unit = m.group(2).lower()
    if unit not in _UNITS:
        raise ValueError(
            f"unknown unit '{m.group(2)}' in '{text}' (use B, KB, KiB, MB, MiB, GB, GiB, TB, TiB)"
        )
    return int(float(m.group(1)) * _UNITS[unit])


def parse_memory_limit(text: str | None) -> dict[str, int]:
    """``cpu=48GiB,gpu0=22GiB`` → {"cpu": ..., "gpu0": ...}; a bare size is the host's; "" → {}."""
    if text is None or not text.strip():
        return {}
    out: dict[str, int] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        device, sep, size = part.partition("=")
        if not sep:
            device, size = DEFAULT_DEVICE, part
        device = device.strip().lower()
        if not _DEVICE.match(device):
            raise ValueError(f"unknown device '{device}' in '{text}' (use cpu, gpu0, gpu1, ...)")
        if device in out:
            raise ValueError(f"device '{device}' is named twice in '{text}'")
        out[device] = parse_size(size)
    return out


def format_size(n: float) -> str:
    """Bytes for people: 1.5 GiB, 300 MiB."""
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"
