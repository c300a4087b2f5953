"""Port pools: the public per-instance ports and the internal llama-server ports."""

from __future__ import annotations

import logging
import socket

from llamaman.core.config import Settings
from llamaman.core.tables import Instance
from llamaman.instances.instance import InstanceConflict, InstanceInvalid

log = logging.getLogger(__name__)


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
    """Hands out ports from a range, skipping ports in use by us or by anything else.

    Each port we hold has an owner (an instance id): a port is handed to someone else only once its
    owner has released it, so an instance coming back never takes, or probes, another's port."""

    def __init__(self, start: int, end: int, name: str = "port") -> None:
        self.start, self.end, self.name = start, end, name
        self._owners: dict[int, str | None] = {}

    def __contains__(self, port: int) -> bool:
        return self.start <= port <= self.end

    @property
    def taken(self) -> frozenset[int]:
        return frozenset(self._owners)

    def owner(self, port: int | None) -> str | None:
        return self._owners.get(port) if port is not None else None

    def held_by(self, port: int | None, owner: str) -> bool:
        return port is not None and port in self._owners and self._owners[port] == owner

    def is_available(self, port: int) -> bool:
        return port in self and port not in self._owners and port_is_free(port)

    def next_free(self, exclude: set[int] | None = None) -> int:
        for port in range(self.start, self.end + 1):
            if exclude and port in exclude:
                continue
            if port not in self._owners and port_is_free(port):
                return port
        raise PortPoolExhausted(f"no free {self.name} in {self.start}-{self.end}")

    def take(self, port: int | None = None, owner: str | None = None) -> int:
        if port is None:
            port = self.next_free()
        self._owners[port] = owner
        return port

    def claim(self, port: int, owner: str | None = None) -> None:
        """Mark a port as ours without checking (an adopted process already holds it)."""
        self._owners[port] = owner

    def assign(self, port: int, owner: str) -> None:
        """Name the owner of a port taken before its owner had an id."""
        if port in self._owners:
            self._owners[port] = owner

    def release(self, port: int | None, owner: str | None = None) -> None:
        """Give a port back; with ``owner``, only if that owner still holds it."""
        if port is None or port not in self._owners:
            return
        if owner is not None and self._owners[port] not in (owner, None):
            return
        del self._owners[port]


class PortClaims:
    """The two pools of one supervisor, and how an instance holds its ports in them."""

    def __init__(self, settings: Settings) -> None:
        self.ports = PortPool(settings.port_range_start, settings.port_range_end, "port")
        self.internal_ports = PortPool(
            settings.internal_port_range_start, settings.internal_port_range_end, "internal port"
        )

    def next_port(self) -> int:
        try:
            return self.ports.next_free()
        except PortPoolExhausted as exc:
            raise InstanceConflict(str(exc)) from None

    def check(self, port: int) -> None:
        """A port a user asked for: inside the pool and free, or InstanceError."""
        if port not in self.ports:
            raise InstanceInvalid(
                f"port {port} is outside the pool {self.ports.start}-{self.ports.end} (PORT_RANGE_START/END)"
            )
        if port in self.ports.taken or not port_is_free(port):
            raise InstanceConflict(f"port {port} is already in use; GET /api/next-port suggests a free one")

    def reserve(self, r: Instance) -> bool:
        """Hold the instance's ports again before it starts. A port another instance now owns (it
        was released when this one stopped) is never shared: this instance moves to a free one, so
        neither its server nor its health probe can reach the other's server. True when a port changed."""
        changed = False
        if not self.ports.held_by(r.port, r.id):
            if r.port not in self.ports.taken and port_is_free(r.port):
                self.ports.take(r.port, r.id)
            elif r.port in self.ports.taken:
                other = self.ports.owner(r.port)
                try:
                    new = self.ports.take(None, r.id)
                except PortPoolExhausted as exc:
                    raise InstanceConflict(str(exc)) from None
                log.info("%s: port %s now belongs to %s; moving to %s", r.id, r.port, other, new)
                r.port, changed = new, True
            else:
                raise InstanceConflict(f"port {r.port} is now taken by another program")
        if r.internal_port is not None and not self.internal_ports.held_by(r.internal_port, r.id):
            if r.internal_port not in self.internal_ports.taken and port_is_free(r.internal_port):
                self.internal_ports.take(r.internal_port, r.id)
            else:
                try:
                    r.internal_port = self.internal_ports.take(None, r.id)
                except PortPoolExhausted as exc:
                    self.ports.release(r.port, r.id)
                    raise InstanceConflict(str(exc)) from None
                changed = True
        return changed

    def release(self, r: Instance) -> None:
        self.ports.release(r.port, r.id)
        self.internal_ports.release(r.internal_port, r.id)
