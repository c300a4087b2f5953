"""P1-P3: latency, throughput and cold start on real llama-servers (tiny models), LlamaMan
beside a direct llama-server and llama.cpp's router mode, with the same llama-server settings for all.
Requests to the targets are interleaved so drift on the shared 2 cores hits every target alike."""

from __future__ import annotations

import asyncio
import contextlib
import re
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.client import Result, chat, expected, ollama_chat, session
from bench.harness import (
    LlamaManProc,
    auth_headers,
    free_port,
    llama_server_bin,
    percentile,
    put_preset,
    unload,
)


@dataclass
class Target:
    name: str
    url: str
    headers: dict[str, str]
    # "ollama": streamed requests go to /api/chat; pid: the process whose CPU time a P2 run measures.
    dialect: str = "openai"
    pid: int | None = None


def _ms(results: list[Result]) -> list[float]:
    return [r.ms for r in results]


def _errors(results: list[Result]) -> list[str]:
    return [r.error for r in results if r.error]


# ---- P1: plain chat latency ---------------------------------------------------------------------
async def _p1(targets: list[Target], n1: int, rounds16: int) -> dict[str, Any]:
    check = expected("tiny-a", 8)
    lat1: dict[str, list[Result]] = {t.name: [] for t in targets}
    lat16: dict[str, list[Result]] = {t.name: [] for t in targets}
    async with session() as s:
        for t in targets:  # warm-up: connections, caches, the first load behind the proxies
            for _ in range(20):
                await chat(s, t.url, "tiny-a", 8, headers=t.headers)
        for i in range(n1):
            # Rotate which target goes first so none always follows another's request.
            for t in targets[i % len(targets) :] + targets[: i % len(targets)]:
                lat1[t.name].append(await chat(s, t.url, "tiny-a", 8, headers=t.headers, check=check))
    async with session(keep_alive=False) as s:
        for i in range(rounds16):
            for t in targets[i % len(targets) :] + targets[: i % len(targets)]:
                batch = [chat(s, t.url, "tiny-a", 8, headers=t.headers, check=check) for _ in range(16)]
                lat16[t.name] += await asyncio.gather(*batch)
    out: dict[str, Any] = {}
    for conc, lat in (("c1", lat1), ("c16", lat16)):
        d50, d99 = percentile(_ms(lat["direct"]), 0.5), percentile(_ms(lat["direct"]), 0.99)
        for name, res in lat.items():
            p50, p99 = percentile(_ms(res), 0.5), percentile(_ms(res), 0.99)
            out[f"{conc}.{name}"] = {
                "p50": p50, "p99": p99, "added_p50": p50 - d50, "added_p99": p99 - d99,
                "n": len(res), "errors": _errors(res),
            }  # fmt: skip
    # How much of each target's added p50 at concurrency 1 is llama-server's own time: the server
    # behind a relay is another process than the direct one, and its p50 moves by tenths of a ms from
    # one start to the next on a small VM.
    direct_server = _server_ms(lat1["direct"])
    for name, res in lat1.items():
        own = _server_ms(res)
        if own and direct_server:
            out[f"c1.{name}"]["server_added_p50"] = percentile(own, 0.5) - percentile(direct_server, 0.5)
    async with session() as s:
        for t in targets:
            if t.pid is not None:
                out[f"c1.{t.name}"].update(await _own_added(s, t, n1))
    return out


def own_server(pid: int, name: str) -> Target:
    """The llama-server a relay process runs (LlamaMan's instance, router mode's child), asked
    directly, with the key the relay gave it if any."""
    for child in psutil.Process(pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            argv = child.cmdline()
            if argv and Path(argv[0]).name.startswith("llama-server") and "--port" in argv:
                key = child.environ().get("LLAMA_API_KEY")
                url = f"http://127.0.0.1:{argv[argv.index('--port') + 1]}"
                return Target(name, url, {"Authorization": f"Bearer {key}"} if key else {})
    raise RuntimeError(f"process {pid} runs no llama-server")


async def _own_added(s: Any, relay: Target, n: int) -> dict[str, float]:
    """The relay's p50 less its own llama-server's, asked directly, in a rotation of the two alone:
    the same server process behind both, each request following one of the other's, so neither the
    server's start-to-start spread nor another process's cache footprint counts (both of which move
    the direct comparison by tenths of a ms, or more, on a small VM)."""
    assert relay.pid is not None
    server = own_server(relay.pid, f"{relay.name}'s llama-server")
    check = expected("tiny-a", 8)
    res: dict[str, list[Result]] = {relay.name: [], server.name: []}
    pair = [server, relay]
    for i in range(n):
        for t in pair[i % 2 :] + pair[: i % 2]:
            r = await chat(s, t.url, "tiny-a", 8, headers=t.headers, check=check)
            if r.error:
                raise RuntimeError(f"{t.name}: {r.error}")
            res[t.name].append(r)
    own = percentile(_ms(res[server.name]), 0.5)
    out = {"added_own_p50": percentile(_ms(res[relay.name]), 0.5) - own, "own_server_p50": own}
    # Of it, the server's own time: what the relay's process takes from its compute while it runs.
    relayed, asked = _server_ms(res[relay.name]), _server_ms(res[server.name])
    if relayed and asked:
        out["server_added_own_p50"] = percentile(relayed, 0.5) - percentile(asked, 0.5)
    return out


def _server_ms(results: list[Result]) -> list[float]:
    return [r.server_ms for r in results if r.server_ms is not None]


async def warm_up(targets: list[Target]) -> None:
    """Twenty plain chats to each target: connections, caches, the first load behind a proxy."""
    async with session() as s:
        for t in targets:
            for _ in range(20):
                await chat(s, t.url, "tiny-a", 8, headers=t.headers)


async def in_rounds(
    rounds: list[list[Target]], each_round: Callable[[int], None] | None = None
) -> list[tuple[Target, Result]]:
    """One plain chat to each target of each round, in order, each answer checked; (target, result)
    as sent. Any error stops it. ``each_round(i)`` is called before round ``i`` (to start a trace
    part-way)."""
    check = expected("tiny-a", 8)
    sent: list[tuple[Target, Result]] = []
    async with session() as s:
        for i, targets in enumerate(rounds):
            if each_round is not None:
                each_round(i)
            for t in targets:
                r = await chat(s, t.url, "tiny-a", 8, headers=t.headers, check=check)
                if r.error:
                    raise RuntimeError(f"{t.name}: {r.error}")
                sent.append((t, r))
    return sent


async def rotation_results(
    targets: list[Target], n: int, each_round: Callable[[int], None] | None = None
) -> dict[str, list[Result]]:
    """P1's rotation at concurrency 1, for the scripts that look into it: ``n`` rounds of one plain
    chat to each target in turn, the first target rotating; each target's results (see
    ``in_rounds``)."""
    rounds = [targets[i % len(targets) :] + targets[: i % len(targets)] for i in range(n)]
    out: dict[str, list[Result]] = {t.name: [] for t in targets}
    for t, r in await in_rounds(rounds, each_round):
        out[t.name].append(r)
    return out


async def rotation(
    targets: list[Target], n: int, each_round: Callable[[int], None] | None = None
) -> dict[str, list[float]]:
    """``rotation_results``' latencies (ms) per target."""
    results = await rotation_results(targets, n, each_round)
    return {name: _ms(res) for name, res in results.items()}


def p1_latency(targets: list[Target], n1: int = 300, rounds16: int = 30) -> dict[str, Any]:
    return asyncio.run(_p1(targets, n1, rounds16))


# ---- P2: 32 concurrent streams ------------------------------------------------------------------
def _stream(s: Any, t: Target, tokens: int, check: str | None) -> Any:
    if t.dialect == "ollama":
        return ollama_chat(s, t.url, "tiny-a", tokens, headers=t.headers, check=check)
    return chat(s, t.url, "tiny-a", tokens, stream=True, headers=t.headers, check=check)


def _cpu_s(pid: int | None) -> float:
    if pid is None:
        return 0.0
    c = psutil.Process(pid).cpu_times()
    return c.user + c.system


async def _p2(targets: list[Target], streams: int, tokens: int, rounds: int) -> dict[str, Any]:
    check = expected("tiny-a", tokens)
    rates: dict[str, list[float]] = {t.name: [] for t in targets}
    errors: dict[str, list[str]] = {t.name: [] for t in targets}
    # The proxy's own CPU time over its rounds, per streamed token: the cost as a rate, which the
    # share of the 2 cores the servers leave it does not blur the way tokens/s does.
    cpu = {t.name: 0.0 for t in targets}
    streamed = {t.name: 0 for t in targets}
    async with session(keep_alive=False) as s:
        for t in targets:
            await _stream(s, t, 8, None)
        for i in range(rounds):
            for t in targets[i % len(targets) :] + targets[: i % len(targets)]:
                c0 = _cpu_s(t.pid)
                t0 = time.perf_counter()
                res = await asyncio.gather(*(_stream(s, t, tokens, check) for _ in range(streams)))
                wall = time.perf_counter() - t0
                cpu[t.name] += _cpu_s(t.pid) - c0
                streamed[t.name] += sum(r.tokens for r in res)
                rates[t.name].append(sum(r.tokens for r in res) / wall)
                errors[t.name] += _errors(res)
    direct = statistics.median(rates["direct"])
    out: dict[str, Any] = {}
    for t in targets:
        out[t.name] = {
            "tokens_per_s": statistics.median(rates[t.name]),
            "pct_of_direct": 100 * statistics.median(rates[t.name]) / direct,
            "rounds": rates[t.name],
            "errors": errors[t.name],
        }
        if t.pid is not None and streamed[t.name]:
            out[t.name]["us_per_token"] = 1e6 * cpu[t.name] / streamed[t.name]
            out[t.name]["cpu_s"] = cpu[t.name]
    return out


def p2_streams(
    targets: list[Target], streams: int = 32, tokens: int = 256, rounds: int = 3
) -> dict[str, Any]:
    return asyncio.run(_p2(targets, streams, tokens, rounds))


# ---- P3: cold start -----------------------------------------------------------------------------
def server_start_to_healthy(model: Path, repeats: int, ctx: int = 2048) -> list[float]:
    """llama-server's own spawn -> /health 200, polled every millisecond."""
    out = []
    for _ in range(repeats):
        port = free_port()
        argv = [llama_server_bin(), "-m", str(model), "--host", "127.0.0.1", "--port", str(port),
                "-c", str(ctx), "-np", "1", "--no-webui"]  # fmt: skip
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            with httpx.Client(timeout=1) as c:
                deadline = t0 + 30
                while time.perf_counter() < deadline:
                    with contextlib.suppress(httpx.HTTPError):
                        if c.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                            break
                    time.sleep(0.001)
            out.append((time.perf_counter() - t0) * 1000)
        finally:
            proc.terminate()
            proc.wait(10)
    return out


def _wait_unloaded(url: str, headers: dict[str, str], model: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = httpx.get(f"{url}/models", headers=headers, timeout=10).json()["data"]
        states = {m["id"]: m["status"]["value"] for m in data}
        if states.get(model) == "unloaded":
            return
        time.sleep(0.05)
    raise TimeoutError(f"{model} did not unload")


async def _first_token(t: Target, model: str) -> Result:
    async with session() as s:
        return await chat(s, t.url, model, 4, stream=True, headers=t.headers, check=expected(model, 4))


def p3_cold_start(lm: LlamaManProc, router: Target, model_file: Path, repeats: int = 5) -> dict[str, Any]:
    own = server_start_to_healthy(model_file, repeats)
    lm_t = Target("llamaman", lm.url, auth_headers())
    cold: dict[str, list[float]] = {"llamaman": [], "router": []}
    warm: dict[str, list[float]] = {"llamaman": [], "router": []}
    errors: list[str] = []
    for _ in range(repeats):
        for t in (lm_t, router):
            asyncio.run(_first_token(t, "tiny-a"))  # make sure it is loaded, then unload it
            if t is lm_t:
                unload(lm, "tiny-a")
            else:
                httpx.post(f"{t.url}/models/unload", json={"model": "tiny-a"}, timeout=30).raise_for_status()
            _wait_unloaded(t.url, t.headers, "tiny-a")
            time.sleep(0.2)  # let the old process go before the next one starts
            r = asyncio.run(_first_token(t, "tiny-a"))
            if r.error or r.ttft_ms is None:
                errors.append(f"{t.name}: {r.error}")
                continue
            cold[t.name].append(r.ttft_ms)
            w = asyncio.run(_first_token(t, "tiny-a"))
            if w.ttft_ms is not None:
                warm[t.name].append(w.ttft_ms)
    own_ms = statistics.median(own)
    out: dict[str, Any] = {"server_start_to_healthy_ms": own_ms, "server_runs": own, "errors": errors}
    for name in cold:
        c = statistics.median(cold[name]) if cold[name] else float("nan")
        out[name] = {
            "cold_ttft_ms": c,
            "over_server_start_ms": c - own_ms,
            "warm_ttft_ms": statistics.median(warm[name]) if warm[name] else float("nan"),
            "runs": cold[name],
        }
    return out


# ---- load counters (P4 and P7 in bench/memory.py) -----------------------------------------------
def llamaman_loads(lm: LlamaManProc) -> int:
    text = httpx.get(f"{lm.url}/metrics", headers=auth_headers(), timeout=10).text
    m = re.search(r"^llamaman_model_loads(?:_total)? (\S+)$", text, re.M)
    return int(float(m.group(1))) if m else -1


def router_loads(log: Path) -> int:
    return sum(
        1
        for line in log.read_text(errors="replace").splitlines()
        if "spawning server instance with name" in line
    )


def prepare_llamaman(lm: LlamaManProc, ctx: int, parallel: int) -> None:
    for model in ("tiny-a.gguf", "tiny-b.gguf"):
        put_preset(lm, model, ctx_size=ctx, parallel=parallel)
