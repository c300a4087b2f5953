"""What any relay costs on this machine, beside what LlamaMan's costs: the floor under P1.

The same plain chat (max_tokens 8, tiny model) goes to: a direct llama-server; llama.cpp's router
mode; ``socat`` relaying bytes to a llama-server of its own (a compiled relay that parses nothing:
the floor of any relay; left out where socat is not installed); two relays in Python on uvloop, one
that passes bytes both ways and one that parses each request and answer (``bench/least_relay.py``:
the least an HTTP relay does); a bare ASGI relay (uvicorn with httptools and LlamaMan's own upstream
client, nothing else); each in front of a llama-server of its own;
and LlamaMan, with its proxy's fast lane and without it (``LLAMAMAN_PROXY_FAST_LANE=0``: every
request through the ASGI stack). Every target has its own llama-server process, as in P1, and the
requests go to the targets one each in turn, the first target rotating, as in P1 (``--blocks`` sends
each target a block of ``-n`` requests in turn instead, ``--rounds`` times). Each relay's CPU time per
request is read from its process.

``--burst 16`` sends each target sixteen requests at once per round, each on a fresh connection,
as P1 does at concurrency 16.

Run: python bench/relay_floor.py [-n 300] [--blocks] [--rounds 3] [--burst 16]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.client import chat, expected, session
from bench.harness import (
    auth_headers,
    direct_server,
    free_port,
    llamaman,
    machine,
    make_models,
    maybe_router_mode,
    percentile,
    wait_http,
    wait_port,
)
from bench.least_relay import serve_http
from bench.scenarios import Target, prepare_llamaman


# ---- the bare ASGI relay, run as ``python bench/relay_floor.py --serve asgi PORT UPSTREAM_PORT`` --
def serve_asgi(port: int, upstream: int) -> None:
    import uvicorn

    from llamaman.upstream.client import UpstreamClient

    base = f"http://127.0.0.1:{upstream}"
    clients: list[UpstreamClient] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if not clients:
            clients.append(UpstreamClient(connect_timeout=5.0))
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = [(b"content-type", b"application/json")]
        r = await clients[0].request("POST", base, scope["path"], headers=headers, content=body, timeout=60)
        data = await r.aread()
        r.close()
        out = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(data))]
        await send({"type": "http.response.start", "status": r.status_code, "headers": out})
        await send({"type": "http.response.body", "body": data})

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, lifespan="off")


# ---- the Python byte relay, run as ``python bench/relay_floor.py --serve bytes PORT UPSTREAM_PORT`` -
def serve_bytes(port: int, upstream: int) -> None:
    """Bytes both ways on uvloop, one upstream connection per client connection: parses nothing, so
    what it adds over socat is the Python event loop's own cost per hop."""
    import uvloop

    class Upstream(asyncio.Protocol):
        def __init__(self, client: asyncio.Transport) -> None:
            self.client = client

        def data_received(self, data: bytes) -> None:
            self.client.write(data)

        def connection_lost(self, exc: Exception | None) -> None:
            self.client.close()

    class Client(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport: Any = transport
            self.upstream: Any = None
            self.early: list[bytes] = []
            asyncio.get_running_loop().create_task(self.connect())

        async def connect(self) -> None:
            loop = asyncio.get_running_loop()
            self.upstream, _ = await loop.create_connection(
                lambda: Upstream(self.transport), "127.0.0.1", upstream
            )
            for data in self.early:
                self.upstream.write(data)

        def data_received(self, data: bytes) -> None:
            if self.upstream is None:
                self.early.append(data)
            else:
                self.upstream.write(data)

        def connection_lost(self, exc: Exception | None) -> None:
            if self.upstream is not None:
                self.upstream.close()

    async def run() -> None:
        server = await asyncio.get_running_loop().create_server(Client, "127.0.0.1", port)
        await server.serve_forever()

    uvloop.run(run())


# ---- measurement -------------------------------------------------------------------------------
async def block(url: str, headers: dict[str, str], n: int) -> list[float]:
    check = expected("tiny-a", 8)
    async with session() as s:
        for _ in range(20):
            await chat(s, url, "tiny-a", 8, headers=headers)
        out = []
        for _ in range(n):
            r = await chat(s, url, "tiny-a", 8, headers=headers, check=check)
            assert r.error is None, r.error
            out.append(r.ms)
        return out


def cpu_s(pid: int | None) -> float:
    if pid is None:
        return 0.0
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


async def interleaved(targets: list[Target], n: int, burst: int = 1) -> dict[str, list[float]]:
    """``n`` rounds, one request (or a burst of ``burst`` at once, each on a fresh connection, as P1's
    concurrency 16) to each target in turn."""
    check = expected("tiny-a", 8)
    ms: dict[str, list[float]] = {t.name: [] for t in targets}
    async with session() as s:
        for t in targets:
            for _ in range(20):
                await chat(s, t.url, "tiny-a", 8, headers=t.headers)
    async with session(keep_alive=burst == 1) as s:
        for i in range(n):
            for t in targets[i % len(targets) :] + targets[: i % len(targets)]:
                asked = [chat(s, t.url, "tiny-a", 8, headers=t.headers, check=check) for _ in range(burst)]
                for r in await asyncio.gather(*asked):
                    assert r.error is None, f"{t.name}: {r.error}"
                    ms[t.name].append(r.ms)
    return ms


def socat_target(stack: contextlib.ExitStack, models: Path, name: str) -> Target | None:
    """``socat`` relaying bytes to a llama-server of its own; None (and a line on stderr) where
    socat is not installed."""
    socat = shutil.which("socat")
    if socat is None:
        print("socat is not installed: measured without the compiled byte relay", file=sys.stderr)
        return None
    own = stack.enter_context(direct_server(models / "tiny-a.gguf"))
    port = free_port()
    argv = [
        socat,
        f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,nodelay",
        f"TCP:127.0.0.1:{own.port},nodelay",
    ]
    proc = subprocess.Popen(argv)
    stack.callback(proc.kill)
    wait_port(port)
    # No pid: socat relays in a child per connection, so its own CPU time says nothing.
    return Target(name, f"http://127.0.0.1:{port}", {})


def python_relay(stack: contextlib.ExitStack, models: Path, kind: str, name: str) -> Target:
    """One of the relays in Python (``kind``: bytes, http, asgi), in a process of its own in front of
    a llama-server of its own."""
    own = stack.enter_context(direct_server(models / "tiny-a.gguf"))
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--serve", kind, str(port), str(own.port)])
    stack.callback(proc.kill)
    wait_port(port)
    return Target(name, f"http://127.0.0.1:{port}", {}, pid=proc.pid)


def _relay_targets(stack: contextlib.ExitStack, models: Path) -> list[Target]:
    """socat (where installed) and the relays in Python, each in front of a llama-server of its own."""
    socat = socat_target(stack, models, "byte relay (socat)")
    kinds = (("bytes", "Python byte relay"), ("http", "Python HTTP relay"), ("asgi", "bare ASGI relay"))
    return [*([socat] if socat is not None else []), *(python_relay(stack, models, k, n) for k, n in kinds)]


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--serve":
        serve = {"asgi": serve_asgi, "bytes": serve_bytes, "http": serve_http}[sys.argv[2]]
        serve(int(sys.argv[3]), int(sys.argv[4]))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=300, help="requests per target (per round with --blocks)")
    ap.add_argument("--blocks", action="store_true", help="a block of -n requests per target in turn")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of blocks (with --blocks)")
    ap.add_argument("--burst", type=int, default=1, help="requests sent at once per target and round")
    args = ap.parse_args()
    models = make_models(Path(tempfile.mkdtemp(prefix="bench-models-")))
    with contextlib.ExitStack() as stack:
        direct = stack.enter_context(direct_server(models / "tiny-a.gguf"))
        targets = [Target("direct llama-server", direct.url, {})]
        router = stack.enter_context(maybe_router_mode(models, 2))
        if router is not None:
            targets.append(Target("router mode (C++)", router.url, {}))
        targets += _relay_targets(stack, models)
        for name, env in (("LlamaMan", {}), ("LlamaMan, no fast lane", {"LLAMAMAN_PROXY_FAST_LANE": "0"})):
            lm = stack.enter_context(llamaman(models, extra_env=env))
            prepare_llamaman(lm, ctx=2048, parallel=1)
            wait_http(f"{lm.url}/health", timeout=30)
            targets.append(Target(name, lm.url, auth_headers(), pid=lm.popen.pid))
        cpu0 = {t.name: cpu_s(t.pid) for t in targets}
        if args.blocks:
            ms: dict[str, list[float]] = {t.name: [] for t in targets}
            for _ in range(args.rounds):
                for t in targets:
                    ms[t.name] += asyncio.run(block(t.url, t.headers, args.n))
            sent = args.rounds * (args.n + 20)
        else:
            ms = asyncio.run(interleaved(targets, args.n, args.burst))
            sent = args.n * args.burst + 20
        cpu = {t.name: cpu_s(t.pid) - cpu0[t.name] for t in targets}
    base = {q: percentile(ms[targets[0].name], q) for q in (0.5, 0.9, 0.99)}
    how = f" --blocks --rounds {args.rounds}" if args.blocks else ""
    how += f" --burst {args.burst}" if args.burst > 1 else ""
    print(f"machine: {machine()}")
    print(f"command: python bench/relay_floor.py -n {args.n}{how}")
    head = f"{'target':<24} {'p50 (ms)':>9} {'added p50':>10} {'added p90':>10} {'added p99':>10}"
    print(f"{head} {'CPU/request (ms)':>17}")
    for t in targets:
        added = [percentile(ms[t.name], q) - base[q] for q in (0.5, 0.9, 0.99)]
        per = f"{1000 * cpu[t.name] / sent:.3f}" if t.pid is not None else ""
        cols = " ".join(f"{a:>10.2f}" for a in added)
        print(f"{t.name:<24} {percentile(ms[t.name], 0.5):>9.2f} {cols} {per:>17}")


if __name__ == "__main__":
    main()
