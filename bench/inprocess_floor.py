"""Where LlamaMan's added latency goes, by relays that each do less than its fast lane, in P1's
rotation at concurrency 1 (one plain chat to each target in turn, the first target rotating).

The targets, in this order: a direct llama-server; LlamaMan's proxy port (the fast lane); router
mode; inside the same LlamaMan process, on its event loop, the least an HTTP relay does
(``bench/least_relay.py``) taking a lease from LlamaMan's router for each request; a process of its
own running the same relay in front of a llama-server of its own; and inside LlamaMan again, that
relay with no lease (it asks the router once where the model runs); and the llama-server LlamaMan
runs for the model, asked directly with its own key. The two relays inside LlamaMan send their
requests to that llama-server, as the fast lane does.

Read in this order, each adds one thing to the one before: the relay in its own process; the
LlamaMan process around it (no lease); the router's lease; the fast lane, with the rest of what it
does (the key, the strict body checks, the in-flight entry, the upstream client, the accounting,
uvicorn's protocol). LlamaMan's llama-server asked directly shows what of all that is the server's.

Beside each target's added p50, what of it llama-server's own work accounts for: the p50 of the
``timings`` it reports in each answer (``prompt_ms`` + ``predicted_ms``), less the direct server's.
The rest is the way to llama-server and back.

Run: python bench/inprocess_floor.py [-n 250] [--runs 4]
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import (
    auth_headers,
    direct_server,
    free_port,
    llamaman,
    machine,
    make_models,
    maybe_router_mode,
    percentile,
    wait_port,
)
from bench.scenarios import Target, own_server, prepare_llamaman, rotation_results, warm_up

HERE = Path(__file__).resolve().parent


def _two_free_ports() -> int:
    """A free port whose next one is free too."""
    while True:
        port = free_port()
        try:
            socket.create_server(("127.0.0.1", port + 1)).close()
        except OSError:
            continue
        return port


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=250, help="rounds per run")
    ap.add_argument("--runs", type=int, default=4)
    args = ap.parse_args()
    models = make_models(Path(tempfile.mkdtemp(prefix="bench-models-")))
    floor = _two_free_ports()
    with contextlib.ExitStack() as stack:
        direct = stack.enter_context(direct_server(models / "tiny-a.gguf"))
        router = stack.enter_context(maybe_router_mode(models, 2))
        env = {"LLAMAMAN_FLOOR_PORT": str(floor), "LLAMAMAN_FLOOR_MODES": "lease,none"}
        lm = stack.enter_context(llamaman(models, launcher=HERE / "least_relay.py", extra_env=env))
        prepare_llamaman(lm, ctx=2048, parallel=1)
        lane = Target("LlamaMan (fast lane)", lm.url, auth_headers())
        asyncio.run(warm_up([lane]))  # loads the model the relays inside LlamaMan send to
        own = stack.enter_context(direct_server(models / "tiny-a.gguf"))
        port = free_port()
        serve = [sys.executable, str(HERE / "relay_floor.py"), "--serve", "http", str(port), str(own.port)]
        proc = subprocess.Popen(serve)
        stack.callback(proc.kill)
        wait_port(port)
        targets = [
            Target("direct llama-server", direct.url, {}),
            lane,
            *([Target("router mode (C++)", router.url, {})] if router is not None else []),
            Target("least relay in LlamaMan, lease", f"http://127.0.0.1:{floor}", {}),
            Target("least relay, own process", f"http://127.0.0.1:{port}", {}),
            Target("least relay in LlamaMan, no lease", f"http://127.0.0.1:{floor + 1}", {}),
            own_server(lm.popen.pid, "LlamaMan's llama-server, asked directly"),
        ]
        asyncio.run(warm_up(targets))
        added: dict[str, list[float]] = {t.name: [] for t in targets[1:]}
        server: dict[str, list[float]] = {t.name: [] for t in targets[1:]}
        for _ in range(args.runs):
            results = asyncio.run(rotation_results(targets, args.n))
            wall = {name: [r.ms for r in res] for name, res in results.items()}
            own = {name: [r.server_ms or 0.0 for r in res] for name, res in results.items()}
            base, base_own = percentile(wall[targets[0].name], 0.5), percentile(own[targets[0].name], 0.5)
            for name in added:
                added[name].append(percentile(wall[name], 0.5) - base)
                server[name].append(percentile(own[name], 0.5) - base_own)
    print(f"machine: {machine()}")
    print(f"command: python bench/inprocess_floor.py -n {args.n} --runs {args.runs}")
    head = f"{'target':<40} {'added p50 (ms)':>15} {'of it llama-server':>19}"
    print(f"{head}   each run (added / llama-server)")
    for name, runs in added.items():
        each = " ".join(f"{v:.2f}/{w:.2f}" for v, w in zip(runs, server[name], strict=True))
        print(f"{name:<40} {statistics.mean(runs):>15.2f} {statistics.mean(server[name]):>19.2f}   {each}")


if __name__ == "__main__":
    main()
