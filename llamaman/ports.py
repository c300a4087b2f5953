"""Port pools: the public per-instance ports and the internal llama-server ports."""

from __future__ import annotations

import socket


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when nothing listens on ``port`` (we try to bind it, as llama-server would)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


class PortPoolExhausted(RuntimeError):
    pass


class PortPool:
    """Hands out ports from a range, skipping ports in use by us or by anything else."""

    def __init__(self, start: int, end: int, name: str = "port") -> None:
        self.start, self.end, self.name = start, end, name
        self._taken: set[int] = set()

    def __contains__(self, port: int) -> bool:
        return self.start <= port <= self.end

    @property
    def taken(self) -> frozenset[int]:
        return frozenset(self._taken)

    def is_available(self, port: int) -> bool:
        return port in self and port not in self._taken and port_is_free(port)

    def next_free(self, exclude: set[int] | None = None) -> int:
        for port in range(self.start, self.end + 1):
            if exclude and port in exclude:
                continue
            if port not in self._taken and port_is_free(port):
                return port
        raise PortPoolExhausted(f"no free {self.name} in {self.start}-{self.end}")

    def take(self, port: int | None = None) -> int:
        if port is None:
            port = self.next_free()
        self._taken.add(port)
        return port

    def claim(self, port: int) -> None:
        """Mark a port as ours without checking (an adopted process already holds it)."""
        self._taken.add(port)

    def release(self, port: int | None) -> None:
        if port is not None:
            self._taken.discard(port)
