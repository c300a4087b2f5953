"""Who a request comes from: the client's address (forwarded headers count only from trusted
proxies), whether it came over HTTPS, and the sign-in throttle kept per client and per username."""

from __future__ import annotations

import ipaddress
import time

from starlette.datastructures import Headers
from starlette.requests import HTTPConnection

# Failed sign-ins in a row from one client before it has to wait; the wait doubles with each further
# failure, and the count is forgotten after an hour without failures (or at a success). Each
# username has a count of its own, higher so that one client alone meets its own limit first.
THROTTLE_AFTER = 5
THROTTLE_USER_AFTER = 10
THROTTLE_BASE_S = 30.0
THROTTLE_MAX_S = 900.0
THROTTLE_FORGET_S = 3600.0


class LoginThrottle:
    def __init__(self, after: int = THROTTLE_AFTER) -> None:
        self.after = after
        self._clients: dict[str, tuple[int, float, float]] = {}  # key -> (failures, last, blocked until)

    def retry_after(self, client: str, now: float | None = None) -> int | None:
        now = time.monotonic() if now is None else now
        _, _, until = self._clients.get(client, (0, 0.0, 0.0))
        return max(1, round(until - now + 0.5)) if until > now else None

    def failed(self, client: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        failures, last, _ = self._clients.get(client, (0, 0.0, 0.0))
        if now - last > THROTTLE_FORGET_S:
            failures = 0
        failures += 1
        until = 0.0
        if failures >= self.after:
            until = now + min(THROTTLE_MAX_S, THROTTLE_BASE_S * 2 ** (failures - self.after))
        self._clients[client] = (failures, now, until)
        if len(self._clients) > 10_000:  # bounded, whoever is knocking
            self._clients = {k: v for k, v in self._clients.items() if now - v[1] <= THROTTLE_FORGET_S}

    def succeeded(self, client: str) -> None:
        self._clients.pop(client, None)


def is_https(conn: HTTPConnection) -> bool:
    forwarded = conn.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return conn.url.scheme in ("https", "wss") or forwarded == "https"


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


def trusted_peer(addr: str, proxies: tuple[Network, ...]) -> bool:
    ip = _ip(addr)
    if ip is None:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip.version == net.version and ip in net for net in proxies)


def _forwarded_chain(headers: Headers) -> list[str]:
    """Client addresses the forwarded headers name, nearest proxy last (RFC 7239, then the de-facto
    X-Forwarded-For, then X-Real-IP)."""
    chain: list[str] = []
    for header in headers.getlist("forwarded"):
        for element in header.split(","):
            for pair in element.split(";"):
                name, _, value = pair.strip().partition("=")
                if name.strip().lower() == "for":
                    chain.append(_strip_port(value.strip().strip('"')))
    if chain:
        return chain
    for header in headers.getlist("x-forwarded-for"):
        chain += [_strip_port(a.strip()) for a in header.split(",") if a.strip()]
    if chain:
        return chain
    real = headers.get("x-real-ip", "").strip()
    return [_strip_port(real)] if real else []


def _strip_port(value: str) -> str:
    if value.startswith("["):  # "[2001:db8::1]:4711"
        return value[1:].partition("]")[0]
    if value.count(":") == 1:  # "192.0.2.1:4711"; a bare IPv6 address has more colons
        return value.partition(":")[0]
    return value


def client_address(conn: HTTPConnection, proxies: tuple[Network, ...]) -> str:
    """The address a request came from. Forwarded headers count only when the peer is a trusted
    proxy; then the nearest address in the chain that is not itself a trusted proxy is the client."""
    peer = conn.client.host if conn.client else "unknown"
    if not proxies or not trusted_peer(peer, proxies):
        return peer
    chain = _forwarded_chain(conn.headers)
    for addr in reversed(chain):
        if not trusted_peer(addr, proxies):
            return addr
    return chain[0] if chain else peer
