"""What one round trip between two processes costs on this machine, over TCP on loopback and over a
Unix socket: the kernel's share of the hop between LlamaMan and a llama-server.

A client sends a message the size of a small chat request and waits until another process has
echoed it back, ``-n`` times; every tenth time it sleeps 2 ms first so the cores go idle now and
then, as between requests. p50 and p90 of the round trip, in µs.

Run: python bench/socket_hop.py [-n 3000] [--size 700]
"""

from __future__ import annotations

import argparse
import os
import socket
import tempfile
import time
from pathlib import Path


def _echo(listener: socket.socket) -> None:
    conn, _ = listener.accept()
    if conn.family == socket.AF_INET:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while data := conn.recv(65536):
        conn.sendall(data)


def round_trips(kind: str, n: int, size: int) -> list[float]:
    """``n`` round trips of ``size`` bytes over ``kind`` ("tcp" or "unix"), in µs."""
    if kind == "tcp":
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        address: object = listener.getsockname()
    else:
        address = str(Path(tempfile.mkdtemp(prefix="bench-hop-")) / "hop.sock")
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(address)
    listener.listen()
    pid = os.fork()
    if pid == 0:
        try:
            _echo(listener)
        finally:
            os._exit(0)
    client = socket.socket(listener.family)
    client.connect(address)
    if kind == "tcp":
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    message = b"x" * size
    out = []
    for i in range(n):
        if i % 10 == 0:
            time.sleep(0.002)
        t0 = time.perf_counter_ns()
        client.sendall(message)
        got = 0
        while got < size:
            got += len(client.recv(65536))
        out.append((time.perf_counter_ns() - t0) / 1000)
    client.close()
    os.waitpid(pid, 0)
    listener.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=3000)
    ap.add_argument("--size", type=int, default=700)
    args = ap.parse_args()
    for kind in ("tcp", "unix", "tcp", "unix"):
        v = sorted(round_trips(kind, args.n, args.size))
        print(f"{kind:5s} p50 {v[len(v) // 2]:6.1f} µs  p90 {v[int(len(v) * 0.9)]:6.1f} µs")
    print(f"command: python bench/socket_hop.py -n {args.n} --size {args.size}")


if __name__ == "__main__":
    main()
