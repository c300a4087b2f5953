"""Free loopback ports for tests, benchmarks and the screenshot script."""

from __future__ import annotations

import socket

from llamaman.instances.ports import port_is_free


def free_port() -> int:
    """A port the OS says is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_block(size: int, start: int) -> int:
    """First port of ``size`` consecutive ports at or after ``start`` with nothing listening."""
    port = start
    while port + size < 65000:
        if all(port_is_free(p) for p in range(port, port + size)):
            return port
        port += size
    raise RuntimeError("no free port block")
