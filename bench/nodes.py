"""Several boxes behind one entry node: throughput of 1 vs 3 nodes, and the latency of a node hop.

Every node is a LlamaMan process on one throwaway MariaDB. Their llama-servers are
``bench/fake_upstream.py`` with a fixed delay per token, and a preset caps each instance at
``--cap`` requests at once, so a node's throughput is bounded by its slots, not by this machine's
CPU: what the figure shows is whether the entry node spreads work over the other nodes' slots.
Every answer is checked for its exact text.

Run: python bench/nodes.py [--clients 24] [--requests 240] [--cap 4] [--tokens 32] [--delay 0.005]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.client import chat, session
from bench.fake_upstream import expected, wrapper_script
from bench.harness import (
    LlamaManProc,
    auth_headers,
    llamaman,
    machine,
    percentile,
    put_preset,
)
from llamaman.testing.mariadb import MariaDBServer
from llamaman.testing.tiny_gguf import write_tiny_model

SECRET = "bench-node-secret-0123456789abcdef"


async def burst(url: str, model: str, n: int, clients: int, tokens: int) -> dict[str, Any]:
    """``n`` streamed chats from ``clients`` concurrent clients; requests per second and errors."""
    want = expected(tokens)  # the fake server answers the alphabet whatever the model
    done: list[Any] = []
    queue = list(range(n))

    async with session(keep_alive=False) as s:

        async def client() -> None:
            while queue:
                queue.pop()
                done.append(
                    await chat(s, url, model, tokens, stream=True, headers=auth_headers(), check=want)
                )

        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        wall = time.perf_counter() - t0
    errors = [r.error for r in done if r.error]
    return {"requests": n, "wall_s": round(wall, 3), "rps": round(n / wall, 2), "errors": len(errors),
            "first_error": errors[0] if errors else None}  # fmt: skip


def latencies(urls: list[str], model: str, n: int) -> list[list[float]]:
    """``n`` plain chats to each of ``urls``, one to each in turn (the order rotating), so drift on
    the shared cores hits every target alike; each answer's text is checked."""
    out: list[list[float]] = [[] for _ in urls]
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    clients = [httpx.Client(base_url=u, timeout=60, headers=auth_headers()) for u in urls]
    try:
        for i in range(n):
            for j in [*range(i % len(urls), len(urls)), *range(i % len(urls))]:
                t0 = time.perf_counter()
                r = clients[j].post("/v1/chat/completions", json=body)
                out[j].append((time.perf_counter() - t0) * 1000)
                assert r.status_code == 200, r.text
                assert r.json()["choices"][0]["message"]["content"] == expected(8)
    finally:
        for c in clients:
            c.close()
    return out


def served_by(entry: LlamaManProc, last: int) -> dict[str, int]:
    """How many of the last ``last`` requests each node answered, from the entry node's activity."""
    r = httpx.get(f"{entry.api}/api/activity", params={"limit": last}, headers=auth_headers(), timeout=30)
    r.raise_for_status()
    rows = r.json()
    rows = rows.get("rows", rows.get("items", [])) if isinstance(rows, dict) else rows
    counts: dict[str, int] = {}
    for row in rows[:last]:
        node = str(row.get("node") or "?")
        counts[node] = counts.get(node, 0) + 1
    return counts


def wait_nodes(entry: LlamaManProc, names: set[str], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = httpx.get(f"{entry.api}/api/nodes", headers=auth_headers(), timeout=5)
        if r.status_code == 200:
            alive = {n["name"] for n in r.json().get("nodes", []) if n.get("alive")}
            if names <= alive:
                return
        time.sleep(0.2)
    raise SystemExit(f"nodes {sorted(names)} did not all come up within {timeout} s")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=24)
    ap.add_argument("--requests", type=int, default=240)
    ap.add_argument("--cap", type=int, default=4, help="requests one node's instance serves at once")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--delay", type=float, default=0.005, help="seconds per token of the fake server")
    ap.add_argument("--hops", type=int, default=200, help="requests for the node-hop latency")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-nodes-"))
    fake = str(wrapper_script(work, token_delay=args.delay))
    folders = {}
    for name, models in (("n1", ["a"]), ("n2", ["a", "b"]), ("n3", ["a"])):
        folders[name] = work / f"models-{name}"
        for m in models:
            write_tiny_model(folders[name] / f"tiny-{m}.gguf", m.upper())
    db = MariaDBServer.start()
    result: dict[str, Any] = {"machine": machine(), "args": vars(args) | {"json": None}}
    try:
        env = {"DATABASE_URL": db.url, "LLAMAMAN_NODE_SECRET": SECRET}
        with contextlib.ExitStack() as stack:

            def node(name: str) -> LlamaManProc:
                return stack.enter_context(llamaman(folders[name], server_bin=fake, extra_env=env, node=name))

            n1 = node("n1")
            # Presets are shared by every node: the cap holds on each of them.
            put_preset(n1, "tiny-a.gguf", max_concurrent=args.cap, max_queue_depth=10_000)
            asyncio.run(burst(n1.url, "tiny-a", args.clients, args.clients, args.tokens))  # loads it
            one = asyncio.run(burst(n1.url, "tiny-a", args.requests, args.clients, args.tokens))
            result["one_node"] = one
            print(f"1 node : {one}")

            n2, n3 = node("n2"), node("n3")
            wait_nodes(n1, {"n1", "n2", "n3"})
            put_preset(n2, "tiny-b.gguf", max_concurrent=args.cap, max_queue_depth=10_000)
            for other in (n2, n3):  # the model resident everywhere, as after a while of traffic
                r = httpx.post(
                    f"{other.url}/models/load", json={"model": "tiny-a"}, headers=auth_headers(), timeout=60
                )
                r.raise_for_status()
            time.sleep(2)  # a heartbeat or two: n1 sees the model resident on the others
            three = asyncio.run(burst(n1.url, "tiny-a", args.requests, args.clients, args.tokens))
            result["three_nodes"] = three
            result["speedup"] = round(three["rps"] / one["rps"], 2)
            three["served_by"] = served_by(n1, args.requests)
            print(f"3 nodes: {three}  speed-up {result['speedup']}x")

            latencies([n1.url, n2.url, n2.api], "tiny-b", 20)  # warm: loads tiny-b on n2 through n1
            direct, hop, main_port = latencies([n2.url, n1.url, n2.api], "tiny-b", args.hops)
            result["direct_main_port_p50_ms"] = round(percentile(main_port, 0.5), 2)
            d50, h50 = percentile(direct, 0.5), percentile(hop, 0.5)
            d99, h99 = percentile(direct, 0.99), percentile(hop, 0.99)
            result["hop"] = {
                "direct_p50_ms": round(d50, 2),
                "via_entry_p50_ms": round(h50, 2),
                "added_p50_ms": round(h50 - d50, 2),
                "added_p99_ms": round(h99 - d99, 2),
            }
            print(f"node hop: {result['hop']} (n2's main port: {result['direct_main_port_p50_ms']} ms)")
    finally:
        db.stop()
    print(f"machine: {result['machine']}")
    print(
        "command: python bench/nodes.py "
        + " ".join(f"--{k} {v}" for k, v in vars(args).items() if v is not None and k != "json")
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
