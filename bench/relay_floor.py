"""What any relay costs on this machine, beside what LlamaMan's costs: the floor under P1.

Four targets answer the same plain chat (max_tokens 8, tiny model): a direct llama-server, a bare
byte relay in front of it (uvloop, no HTTP parsing), a bare ASGI relay in front of it (uvicorn with
httptools, LlamaMan's own upstream client, nothing else), and LlamaMan. Each target gets blocks of
requests in turn (not one request each in turn: on a 2-core machine a llama-server's threads keep
polling for a moment after each answer and slow a request to another server process, which would
blur the comparison), and each relay's CPU time per request is read from its process.

Run: python bench/relay_floor.py [-n 200] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import statistics
import subprocess
import sys
import tempfile
import time
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
    wait_http,
)
from bench.scenarios import prepare_llamaman


# ---- the two bare relays, run as ``python bench/relay_floor.py --serve KIND PORT UPSTREAM_PORT`` --
def serve_bytes(port: int, upstream: int) -> None:
    import uvloop

    class Up(asyncio.Protocol):
        def __init__(self, down: asyncio.Transport) -> None:
            self.down = down

        def data_received(self, data: bytes) -> None:
            self.down.write(data)

        def connection_lost(self, exc: Exception | None) -> None:
            self.down.close()

    class Down(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.t: asyncio.Transport = transport
            self.up: asyncio.Transport | None = None
            self.held: list[bytes] = []
            self.connecting = asyncio.ensure_future(self.connect())

        async def connect(self) -> None:
            loop = asyncio.get_running_loop()
            self.up, _ = await loop.create_connection(lambda: Up(self.t), "127.0.0.1", upstream)
            for data in self.held:
                self.up.write(data)

        def data_received(self, data: bytes) -> None:
            if self.up is None:
                self.held.append(data)
            else:
                self.up.write(data)

        def connection_lost(self, exc: Exception | None) -> None:
            if self.up is not None:
                self.up.close()

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(Down, "127.0.0.1", port)
        await server.serve_forever()

    uvloop.run(main())


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


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--serve":
        {"bytes": serve_bytes, "asgi": serve_asgi}[sys.argv[2]](int(sys.argv[3]), int(sys.argv[4]))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=200, help="requests per target and round")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    models = make_models(Path(tempfile.mkdtemp(prefix="bench-models-")))
    with contextlib.ExitStack() as stack:
        direct = stack.enter_context(direct_server(models / "tiny-a.gguf"))
        upstream = int(direct.url.rsplit(":", 1)[1])
        targets: list[tuple[str, str, dict[str, str], int | None]] = [
            ("direct llama-server", direct.url, {}, None)
        ]
        for kind, name in (("bytes", "byte relay (uvloop)"), ("asgi", "bare ASGI relay")):
            port = free_port()
            proc = subprocess.Popen([sys.executable, __file__, "--serve", kind, str(port), str(upstream)])
            stack.callback(proc.kill)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                with contextlib.suppress(OSError):
                    with socket.create_connection(("127.0.0.1", port), timeout=1):
                        break
                time.sleep(0.05)
            targets.append((name, f"http://127.0.0.1:{port}", {}, proc.pid))
        lm = stack.enter_context(llamaman(models))
        prepare_llamaman(lm, ctx=2048, parallel=1)
        wait_http(f"{lm.url}/health", timeout=30)
        targets.append(("LlamaMan", lm.url, auth_headers(), lm.popen.pid))
        ms: dict[str, list[float]] = {t[0]: [] for t in targets}
        cpu: dict[str, float] = {t[0]: 0.0 for t in targets}
        for _ in range(args.rounds):
            for name, url, headers, pid in targets:
                c0 = cpu_s(pid)
                ms[name] += asyncio.run(block(url, headers, args.n))
                cpu[name] += cpu_s(pid) - c0
    base = statistics.median(ms[targets[0][0]])
    print(f"machine: {machine()}")
    print(f"command: python bench/relay_floor.py -n {args.n} --rounds {args.rounds}")
    print(f"{'target':<22} {'p50 (ms)':>9} {'added p50':>10} {'CPU/request (ms)':>17}")
    for name, _, _, pid in targets:
        p50 = statistics.median(ms[name])
        per = f"{1000 * cpu[name] / (args.rounds * (args.n + 20)):.3f}" if pid is not None else ""
        print(f"{name:<22} {p50:>9.2f} {p50 - base:>10.2f} {per:>17}")


if __name__ == "__main__":
    main()
