"""P5: a thousand concurrent streams through one LlamaMan against a fast fake llama-server;
P6: what an idle LlamaMan with its UI costs. The LlamaMan process is sampled with psutil."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.client import raise_fd_limit
from bench.fake_upstream import wrapper_script
from bench.harness import BENCH_KEY, ROOT, auth_headers, llamaman, percentile, put_preset


class Sampler:
    """Peak and mean RSS of one process (children excluded), sampled on a thread."""

    def __init__(self, pid: int, every: float = 0.05) -> None:
        self.proc = psutil.Process(pid)
        self.every = every
        self.rss: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.rss.append(self.proc.memory_info().rss)
            except psutil.Error:
                return
            self._stop.wait(self.every)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_mb(self) -> float:
        return max(self.rss, default=0) / 2**20


def _warm(url: str, model: str) -> None:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    r = httpx.post(f"{url}/v1/chat/completions", json=body, headers=auth_headers(), timeout=120)
    r.raise_for_status()


def p5_thousand_streams(
    models: Path, clients: int = 1000, procs: int = 2, repeat: int = 2, tokens: int = 32, delay: float = 0.0
) -> dict[str, Any]:
    """``clients`` concurrent streams (``procs`` client processes), each client ``repeat`` streams
    in a row, every token ``delay`` s apart at the fake upstream (by default back to back). The
    instance has one slot, so LlamaMan sends it two requests at a time and holds the other clients
    in its queue: what P5 loads is the proxy's hold on a thousand connections, not the upstream."""
    raise_fd_limit()
    folder = Path(tempfile.mkdtemp(prefix="bench-fake-"))
    fake = wrapper_script(folder, token_delay=delay)
    with llamaman(models, server_bin=str(fake)) as lm:
        put_preset(lm, "tiny-a.gguf", ctx_size=2048, parallel=1)
        _warm(lm.url, "tiny-a")
        start_at = time.time() + 2.0
        argv = [sys.executable, "-m", "bench.client", "--url", lm.url, "--key", BENCH_KEY,
                "--tokens", str(tokens), "--repeat", str(repeat), "--start-at", str(start_at)]  # fmt: skip
        per = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
        with Sampler(lm.popen.pid) as sampler:
            cpu0 = psutil.Process(lm.popen.pid).cpu_times()
            children = [
                subprocess.Popen([*argv, "-n", str(n)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
                for n in per
            ]
            outs = [json.loads(c.communicate(timeout=600)[0].strip().splitlines()[-1]) for c in children]
            cpu1 = psutil.Process(lm.popen.pid).cpu_times()
    ms = [x for o in outs for x in o["ms"]]
    ttft = [x for o in outs for x in o["ttft_ms"]]
    wall = max(o["wall_s"] for o in outs)
    return {
        "clients": clients,
        "streams": len(ms),
        "errors": sum(o["n_errors"] for o in outs),
        "error_samples": [e for o in outs for e in o["errors"]][:10],
        "p50_ms": percentile(ms, 0.5),
        "p99_ms": percentile(ms, 0.99),
        "ttft_p99_ms": percentile(ttft, 0.99),
        "tokens_per_s": sum(o["tokens"] for o in outs) / wall,
        "wall_s": wall,
        "peak_rss_mb": sampler.peak_mb,
        "cpu_s": (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system),
    }


def p6_idle(models: Path, seconds: float = 30.0, settle: float = 5.0) -> dict[str, Any]:
    """RSS and CPU of ``main.py`` with its UI (no browser) and two models loaded, over ``seconds``."""
    with llamaman(models, ui=True) as lm:
        for model in ("tiny-a.gguf", "tiny-b.gguf"):
            put_preset(lm, model, ctx_size=2048, parallel=1)
        _warm(lm.url, "tiny-a")
        _warm(lm.url, "tiny-b")
        time.sleep(settle)
        proc = psutil.Process(lm.popen.pid)
        t0, c0 = time.monotonic(), proc.cpu_times()
        with Sampler(lm.popen.pid, every=0.5) as sampler:
            time.sleep(seconds)
        t1, c1 = time.monotonic(), proc.cpu_times()
        loaded = httpx.get(f"{lm.url}/models", headers=auth_headers(), timeout=10).json()["data"]
    busy = (c1.user + c1.system) - (c0.user + c0.system)
    return {
        "seconds": t1 - t0,
        "cpu_percent": 100 * busy / (t1 - t0),
        "rss_peak_mb": sampler.peak_mb,
        "rss_mean_mb": statistics.mean(sampler.rss) / 2**20 if sampler.rss else 0.0,
        "models_loaded": sorted(m["id"] for m in loaded if m["status"]["value"] == "loaded"),
    }
