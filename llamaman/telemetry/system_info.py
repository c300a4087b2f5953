"""CPU, memory and disk of the box, and what a container may actually use of them.

Inside a container psutil reports the host: all its cores and all its RAM. The cgroup's CPU quota
(``cpu.max`` in v2, ``cpu.cfs_quota_us`` in v1) and memory limit (``memory.max`` /
``memory.limit_in_bytes``) say what this process really gets, so both are reported.
"""

from __future__ import annotations

import os
import platform
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")
# cgroup v1 writes "no limit" as a page-rounded LONG_MAX; anything this large means unlimited.
_UNLIMITED = 1 << 60


@dataclass
class CgroupLimits:
    version: int | None = None
    cpu_quota_cores: float | None = None  # None: no quota
    memory_limit: int | None = None  # None: no limit
    memory_usage: int | None = None  # charged to the cgroup, page cache that could be dropped excluded
    cpu_usage_s: float | None = None  # CPU seconds used by the cgroup so far
    path: str | None = None


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _int(text: str | None) -> int | None:
    if text is None or text == "max":
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _stat(path: Path, key: str) -> int | None:
    for line in (_read(path) or "").splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            return _int(value.strip())
    return None


def _self_paths(proc_cgroup: Path) -> tuple[str | None, dict[str, str]]:
    """This process's v2 path and its v1 paths by controller, from /proc/self/cgroup."""
    v2: str | None = None
    v1: dict[str, str] = {}
    for line in (_read(proc_cgroup) or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            v2 = path
        for c in controllers.split(","):
            if c:
                v1[c] = path
    return v2, v1


def _chain(base: Path, rel: str) -> list[Path]:
    """The cgroup folder of ``rel`` under ``base`` and each ancestor up to ``base`` (innermost first).

    With a cgroup namespace the process sees itself at "/" and its limits sit at ``base``; without
    one the path names its own folder, and a parent's limit binds just as much as its own.
    """
    rel_parts = [p for p in rel.split("/") if p]
    dirs = [base.joinpath(*rel_parts[:n]) for n in range(len(rel_parts), -1, -1)]
    return [d for d in dirs if d.is_dir()] or [base]


def _min(values: Sequence[int | float | None]) -> Any:
    present = [v for v in values if v is not None]
    return min(present) if present else None


def read_cgroup(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_SELF_CGROUP) -> CgroupLimits:
    """The CPU quota and memory limit binding this process (v2 or v1); empty outside any cgroup."""
    v2_path, v1_paths = _self_paths(proc_cgroup)
    has_v1 = "memory" in v1_paths or "cpu" in v1_paths
    if v2_path is not None and not has_v1 and (root / "cgroup.controllers").exists():
        return _read_v2(root, v2_path)
    if has_v1:
        return _read_v1(root, v1_paths)
    return CgroupLimits()


def _read_v2(root: Path, rel: str) -> CgroupLimits:
    chain = _chain(root, rel)
    quotas: list[float | None] = []
    mems: list[int | None] = []
    for d in chain:
        raw = (_read(d / "cpu.max") or "").split()
        if len(raw) == 2 and raw[0] != "max":
            quota, period = _int(raw[0]), _int(raw[1])
            if quota and period:
                quotas.append(quota / period)
        mems.append(_int(_read(d / "memory.max")))
    own = chain[0]
    current = _int(_read(own / "memory.current"))
    inactive = _stat(own / "memory.stat", "inactive_file") or 0
    usage_us = _stat(own / "cpu.stat", "usage_usec")
    return CgroupLimits(
        version=2,
        cpu_quota_cores=_min(quotas),
        memory_limit=_min(mems),
        memory_usage=max(0, current - inactive) if current is not None else None,
        cpu_usage_s=usage_us / 1e6 if usage_us is not None else None,
        path=rel,
    )


def _read_v1(root: Path, paths: dict[str, str]) -> CgroupLimits:
    quotas: list[float | None] = []
    cpu_dir = next((root / n for n in ("cpu", "cpu,cpuacct", "cpuacct,cpu") if (root / n).is_dir()), None)
    cpu_chain = _chain(cpu_dir, paths.get("cpu", "/")) if cpu_dir else []
    for d in cpu_chain:
        quota, period = _int(_read(d / "cpu.cfs_quota_us")), _int(_read(d / "cpu.cfs_period_us"))
        if quota and quota > 0 and period:
            quotas.append(quota / period)
    acct_dir = next(
        (root / n for n in ("cpuacct", "cpu,cpuacct", "cpuacct,cpu") if (root / n).is_dir()), None
    )
    usage_ns = (
        _int(_read(_chain(acct_dir, paths.get("cpuacct", "/"))[0] / "cpuacct.usage")) if acct_dir else None
    )
    mems: list[int | None] = []
    usage = None
    mem_dir = root / "memory"
    if mem_dir.is_dir():
        mem_chain = _chain(mem_dir, paths.get("memory", "/"))
        for d in mem_chain:
            limit = _int(_read(d / "memory.limit_in_bytes"))
            mems.append(limit if limit is not None and limit < _UNLIMITED else None)
        raw = _int(_read(mem_chain[0] / "memory.usage_in_bytes"))
        inactive = _stat(mem_chain[0] / "memory.stat", "total_inactive_file") or 0
        usage = max(0, raw - inactive) if raw is not None else None
    return CgroupLimits(
        version=1,
        cpu_quota_cores=_min(quotas),
        memory_limit=_min(mems),
        memory_usage=usage,
        cpu_usage_s=usage_ns / 1e9 if usage_ns is not None else None,
        path=paths.get("memory") or paths.get("cpu"),
    )


class SystemInfo:
    """Answers /api/system-info; remembers the last cgroup CPU reading to turn it into a percentage."""

    def __init__(
        self, models_dir: Path, cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_SELF_CGROUP
    ) -> None:
        self.models_dir = models_dir
        self.cgroup_root = cgroup_root
        self.proc_cgroup = proc_cgroup
        self._last_cpu: tuple[float, float] | None = None  # (monotonic, cgroup CPU seconds)
        # The first calls only set the baselines the next ones measure against.
        psutil.cpu_percent(None)
        psutil.cpu_percent(None, percpu=True)

    def collect(self) -> dict[str, Any]:
        """Blocking (reads /proc and /sys): call in a thread from async code."""
        cg = read_cgroup(self.cgroup_root, self.proc_cgroup)
        logical = psutil.cpu_count(logical=True) or 1
        try:
            allowed = sorted(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            allowed = list(range(logical))
        affinity = len(allowed)
        effective_cores = min(float(affinity), cg.cpu_quota_cores or float("inf"))
        host_pct = psutil.cpu_percent(None)
        per_cpu = psutil.cpu_percent(None, percpu=True)
        mine = [per_cpu[i] for i in allowed if i < len(per_cpu)]
        vm = psutil.virtual_memory()
        swap = psutil.swap_memory()
        eff_total = min(vm.total, cg.memory_limit) if cg.memory_limit else vm.total
        eff_used = (
            cg.memory_usage if cg.memory_limit and cg.memory_usage is not None else vm.total - vm.available
        )
        try:
            load = list(os.getloadavg())
        except OSError:
            load = None
        return {
            "cpu": {
                "percent": host_pct,
                "cores_logical": logical,
                "cores_physical": psutil.cpu_count(logical=False),
                "cores_available": affinity,
                "quota_cores": cg.cpu_quota_cores,
                "effective_cores": round(effective_cores, 2),
                "effective_percent": self._cgroup_cpu_percent(cg, effective_cores, mine),
                "load_avg": load,
            },
            "memory": {
                "host_total_bytes": vm.total,
                "host_available_bytes": vm.available,
                "host_used_bytes": vm.total - vm.available,
                "host_percent": vm.percent,
                "limit_bytes": cg.memory_limit,
                "effective_total_bytes": eff_total,
                "effective_used_bytes": eff_used,
                "effective_available_bytes": max(0, eff_total - eff_used),
                "effective_percent": round(eff_used / eff_total * 100, 1) if eff_total else None,
                "swap_total_bytes": swap.total,
                "swap_used_bytes": swap.used,
            },
            "disk": self._disk(),
            "cgroup": {"version": cg.version, "path": cg.path},
            "platform": {
                "system": platform.system(),
                "release": platform.release(),
                "machine": platform.machine(),
                "python": platform.python_version(),
                "boot_time": psutil.boot_time(),
            },
        }

    def _cgroup_cpu_percent(self, cg: CgroupLimits, cores: float, per_cpu: list[float]) -> float | None:
        """CPU use as a share of what this process may use (100 = its whole quota or cpuset)."""
        if cg.cpu_usage_s is None or cg.cpu_quota_cores is None:
            # No quota: the busy share of the CPUs this process may run on.
            return round(sum(per_cpu) / len(per_cpu), 1) if per_cpu else None
        now = time.monotonic()
        last, self._last_cpu = self._last_cpu, (now, cg.cpu_usage_s)
        if last is None or now <= last[0]:
            return None
        used = (cg.cpu_usage_s - last[1]) / (now - last[0])
        return round(max(0.0, min(100.0, used / cores * 100)), 1)

    def _disk(self) -> dict[str, Any]:
        try:
            usage = shutil.disk_usage(self.models_dir)
        except OSError as exc:
            return {"path": str(self.models_dir), "error": str(exc)}
        return {
            "path": str(self.models_dir),
            "total_bytes": usage.total,
            "used_bytes": usage.used,
            "free_bytes": usage.free,
            "percent": round(usage.used / usage.total * 100, 1) if usage.total else 0.0,
        }
