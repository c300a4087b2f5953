"""Where GPU readings come from: NVML for NVIDIA, sysfs (``/sys/class/drm``) for AMD and Intel, and
the ``nvidia-smi`` / ``rocm-smi`` command lines when neither library nor sysfs answers.

Every call here blocks (NVML, file reads, subprocesses): the sampler runs them in a thread.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)

DRM_ROOT = Path("/sys/class/drm")
SMI_TIMEOUT = 5.0
_VENDORS = {"0x10de": "nvidia", "0x1002": "amd", "0x8086": "intel"}
MIB = 1024 * 1024


@dataclass
class GpuReading:
    vendor: str
    name: str
    source: str
    key: str  # stable across samples: energy is integrated per key
    uuid: str | None = None
    memory_used: int | None = None
    memory_total: int | None = None
    utilization: float | None = None
    temperature_c: float | None = None
    power_w: float | None = None
    power_limit_w: float | None = None
    # (pid, bytes of GPU memory or None when the driver does not say)
    processes: list[tuple[int, int | None]] = field(default_factory=list)


class GpuSource(Protocol):
    name: str

    def read(self) -> list[GpuReading]: ...

    def close(self) -> None: ...


class SourceUnavailable(Exception):
    """This kind of GPU (or its tooling) is not present; the message says why, for the no-GPU answer."""


# ---- NVIDIA through NVML -----------------------------------------------------------------------
class NvmlSource:
    name = "nvml"

    def __init__(self, nvml: Any) -> None:
        self.nvml = nvml
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as exc:
            raise SourceUnavailable(f"NVML: {exc}") from None
        try:
            count = nvml.nvmlDeviceGetCount()
            self.handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        except nvml.NVMLError as exc:
            self.close()
            raise SourceUnavailable(f"NVML: {exc}") from None
        if not self.handles:
            self.close()
            raise SourceUnavailable("NVML: no NVIDIA GPU")
        # Static facts are read once; NVML answers them the same for the device's lifetime.
        self.names = [_text(self._try(nvml.nvmlDeviceGetName, h)) or "NVIDIA GPU" for h in self.handles]
        self.uuids = [_text(self._try(nvml.nvmlDeviceGetUUID, h)) for h in self.handles]

    def _try(self, fn: Any, *args: Any) -> Any:
        # Consumer cards refuse some queries (power limit, per-process memory): a gap, not a failure.
        try:
            return fn(*args)
        except self.nvml.NVMLError:
            return None

    def read(self) -> list[GpuReading]:
        nv = self.nvml
        out = []
        for i, h in enumerate(self.handles):
            mem = self._try(nv.nvmlDeviceGetMemoryInfo, h)
            util = self._try(nv.nvmlDeviceGetUtilizationRates, h)
            temp = self._try(nv.nvmlDeviceGetTemperature, h, nv.NVML_TEMPERATURE_GPU)
            power = self._try(nv.nvmlDeviceGetPowerUsage, h)
            limit = self._try(nv.nvmlDeviceGetEnforcedPowerLimit, h)
            procs = self._try(nv.nvmlDeviceGetComputeRunningProcesses, h) or []
            out.append(
                GpuReading(
                    vendor="nvidia",
                    name=self.names[i],
                    source=self.name,
                    key=self.uuids[i] or f"nvml:{i}",
                    uuid=self.uuids[i],
                    memory_used=int(mem.used) if mem is not None else None,
                    memory_total=int(mem.total) if mem is not None else None,
                    utilization=float(util.gpu) if util is not None else None,
                    temperature_c=float(temp) if temp is not None else None,
                    power_w=power / 1000 if power is not None else None,
                    power_limit_w=limit / 1000 if limit is not None else None,
                    processes=[(int(p.pid), _used_memory(p)) for p in procs],
                )
            )
        return out

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.nvml.nvmlShutdown()


def _used_memory(p: Any) -> int | None:
    used = getattr(p, "usedGpuMemory", None)
    # NVML reports "not available" (WDDM, some containers) as None or as a huge sentinel value.
    if used is None or used >= 2**63 - 1 or used < 0:
        return None
    return int(used)


def _text(v: Any) -> str | None:
    if v is None:
        return None
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)


# ---- AMD and Intel through sysfs ---------------------------------------------------------------
class DrmSource:
    """amdgpu (and xe/i915 where they expose it) publish memory, busy % and hwmon sensors in sysfs."""

    name = "sysfs"

    def __init__(self, root: Path = DRM_ROOT) -> None:
        self.cards: list[tuple[str, str, Path]] = []  # (card, vendor, device dir)
        if root.is_dir():
            for card in sorted(root.glob("card[0-9]*"), key=lambda p: _card_number(p.name)):
                if not card.name[4:].isdigit():
                    continue  # connectors such as card0-DP-1
                vendor = _VENDORS.get(_read(card / "device" / "vendor") or "")
                # NVIDIA cards are NVML's: sysfs has nothing useful on them.
                if vendor in ("amd", "intel"):
                    self.cards.append((card.name, vendor, card / "device"))
        if not self.cards:
            raise SourceUnavailable(f"no AMD or Intel GPU under {root}")

    def read(self) -> list[GpuReading]:
        out = []
        for card, vendor, dev in self.cards:
            hw = _hwmon(dev)
            name = _read(dev / "product_name") or f"{vendor.upper()} GPU {_read(dev / 'device') or card}"
            out.append(
                GpuReading(
                    vendor=vendor,
                    name=name,
                    source=self.name,
                    key=f"drm:{card}",
                    uuid=_read(dev / "unique_id"),
                    memory_used=_int(dev / "mem_info_vram_used"),
                    memory_total=_int(dev / "mem_info_vram_total"),
                    utilization=_float(dev / "gpu_busy_percent"),
                    temperature_c=_scaled(hw, "temp1_input", 1000),
                    power_w=_scaled(hw, "power1_average", 1e6) or _scaled(hw, "power1_input", 1e6),
                    power_limit_w=_scaled(hw, "power1_cap", 1e6),
                )
            )
        return out

    def close(self) -> None:
        pass


def _card_number(name: str) -> int:
    digits = name[4:]
    return int(digits) if digits.isdigit() else 1 << 30


def _hwmon(dev: Path) -> Path | None:
    found = sorted((dev / "hwmon").glob("hwmon*")) if (dev / "hwmon").is_dir() else []
    return found[0] if found else None


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def _int(path: Path) -> int | None:
    v = _read(path)
    try:
        return int(v) if v is not None else None
    except ValueError:
        return None


def _float(path: Path) -> float | None:
    v = _int(path)
    return float(v) if v is not None else None


def _scaled(hw: Path | None, name: str, div: float) -> float | None:
    v = _int(hw / name) if hw is not None else None
    return v / div if v is not None else None


# ---- command-line fallbacks --------------------------------------------------------------------
def _run(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=SMI_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SourceUnavailable(f"{argv[0]}: {exc}") from None
    if done.returncode != 0:
        raise SourceUnavailable(f"{argv[0]} failed: {(done.stderr or done.stdout).strip()[:200]}")
    return done.stdout


class NvidiaSmiSource:
    name = "nvidia-smi"
    _FIELDS = (
        "index,name,uuid,memory.used,memory.total,utilization.gpu,temperature.gpu,power.draw,power.limit"
    )

    def __init__(self, binary: str | None = None) -> None:
        self.binary = binary or shutil.which("nvidia-smi")
        if self.binary is None:
            raise SourceUnavailable("nvidia-smi not found")
        if not self.read():
            raise SourceUnavailable("nvidia-smi lists no GPU")

    def read(self) -> list[GpuReading]:
        rows = _run(
            [self.binary or "nvidia-smi", f"--query-gpu={self._FIELDS}", "--format=csv,noheader,nounits"]
        )
        procs: dict[str, list[tuple[int, int | None]]] = {}
        with contextlib.suppress(SourceUnavailable):
            apps = _run(
                [
                    self.binary or "nvidia-smi",
                    "--query-compute-apps=gpu_uuid,pid,used_memory",
                    "--format=csv,noheader,nounits",
                ]
            )
            for line in apps.splitlines():
                parts = [p.strip() for p in line.split(",")]
                if len(parts) == 3 and parts[1].isdigit():
                    mib = _num(parts[2])
                    procs.setdefault(parts[0], []).append((int(parts[1]), int(mib * MIB) if mib else None))
        out = []
        for line in rows.splitlines():
            p = [x.strip() for x in line.split(",")]
            if len(p) < 9:
                continue
            used, total = _num(p[3]), _num(p[4])
            out.append(
                GpuReading(
                    vendor="nvidia",
                    name=p[1],
                    source=self.name,
                    key=p[2] or f"smi:{p[0]}",
                    uuid=p[2] or None,
                    memory_used=int(used * MIB) if used is not None else None,
                    memory_total=int(total * MIB) if total is not None else None,
                    utilization=_num(p[5]),
                    temperature_c=_num(p[6]),
                    power_w=_num(p[7]),
                    power_limit_w=_num(p[8]),
                    processes=procs.get(p[2], []),
                )
            )
        return out

    def close(self) -> None:
        pass


class RocmSmiSource:
    name = "rocm-smi"

    def __init__(self, binary: str | None = None) -> None:
        self.binary = binary or shutil.which("rocm-smi")
        if self.binary is None:
            raise SourceUnavailable("rocm-smi not found")
        if not self.read():
            raise SourceUnavailable("rocm-smi lists no GPU")

    def read(self) -> list[GpuReading]:
        raw = _run(
            [
                self.binary or "rocm-smi",
                "--showproductname",
                "--showmeminfo",
                "vram",
                "--showuse",
                "--showtemp",
                "--showpower",
                "--showpowercap",
                "--json",
            ]
        )
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise SourceUnavailable(f"rocm-smi: unreadable output ({exc})") from None
        out = []
        for card, f in sorted(data.items()):
            if not card.startswith("card") or not isinstance(f, dict):
                continue
            used, total = _find(f, "vram total used memory"), _find(f, "vram total memory")
            out.append(
                GpuReading(
                    vendor="amd",
                    name=str(f.get("Card Series") or f.get("Card series") or f"AMD GPU {card}"),
                    source=self.name,
                    key=f"rocm:{card}",
                    uuid=f.get("Unique ID"),
                    memory_used=int(used) if used is not None else None,
                    memory_total=int(total) if total is not None else None,
                    utilization=_find(f, "gpu use"),
                    temperature_c=_find(f, "temperature", "edge"),
                    power_w=_find(f, "graphics package power", exclude="max"),
                    power_limit_w=_find(f, "max graphics package power"),
                )
            )
        return out

    def close(self) -> None:
        pass


def _num(v: str) -> float | None:
    try:
        return float(v)
    except ValueError:
        return None  # "[N/A]", "[Not Supported]"


def _find(fields: dict[str, Any], *words: str, exclude: str | None = None) -> float | None:
    """The first numeric field whose lower-cased name contains every word (rocm-smi renames them often)."""
    for k, v in fields.items():
        name = k.lower()
        if all(w in name for w in words) and not (exclude and exclude in name):
            n = _num(str(v))
            if n is not None:
                return n
    return None


def detect(nvml: Any | None, drm_root: Path, cli: bool) -> tuple[list[GpuSource], list[str]]:
    """Every source that answers, and why each missing one does not (for the no-GPU reason)."""
    sources: list[GpuSource] = []
    reasons: list[str] = []
    if nvml is None:
        try:
            import pynvml

            nvml = pynvml
        except ImportError:
            reasons.append("NVML: pynvml (nvidia-ml-py) is not installed")
    have_nvidia = False
    if nvml is not None:
        try:
            sources.append(NvmlSource(nvml))
            have_nvidia = True
        except SourceUnavailable as exc:
            reasons.append(str(exc))
    have_amd = False
    try:
        drm = DrmSource(drm_root)
        sources.append(drm)
        have_amd = any(v == "amd" for _, v, _ in drm.cards)
    except SourceUnavailable as exc:
        reasons.append(str(exc))
    if cli:
        fallbacks: list[type[NvidiaSmiSource] | type[RocmSmiSource]] = []
        if not have_nvidia:
            fallbacks.append(NvidiaSmiSource)
        if not have_amd:
            fallbacks.append(RocmSmiSource)
        for cls in fallbacks:
            try:
                sources.append(cls())
            except SourceUnavailable as exc:
                reasons.append(str(exc))
    return sources, reasons
