"""Sending a request to another node or to a peer, and trying the next place when one fails.

The entry node translates, checks the caller's key, counts usage and writes the activity row as for
a local model; only the upstream changes. A ``RemoteLease`` stands where a local ``Lease`` would: the
relay sends to its ``base_url`` (another node's main port, with the node secret; a peer, with its
key as Bearer) and asks ``fail_over`` for the next place when this one cannot be reached or answers
5xx before its first byte. A node that failed is skipped until its next heartbeat, a peer until a
poll finds it answering.

A request that carries the node secret was forwarded here by another node: it is served here and
never forwarded again, so two nodes cannot bounce a request between them.
"""

from __future__ import annotations

import functools
import hmac
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol
from urllib.parse import urlsplit

from llamaman.cluster.nodes import NodeRegistry
from llamaman.cluster.peers import PeerDirectory
from llamaman.cluster.rates import SharedRates
from llamaman.cluster.routing import Here, Kind, NodeState, Target, plan, resolve_alias
from llamaman.core.config import Settings
from llamaman.core.errors import LlamaManError

log = logging.getLogger(__name__)

# The node secret on a request one node forwards to another, and the name of the node it came from.
NODE_HEADER = "x-llamaman-node-secret"
VIA_HEADER = "x-llamaman-via"


def secret_matches(settings: Settings, presented: str | None) -> bool:
    """Constant-time check of a presented node secret; never true on a box without one."""
    secret = settings.node_secret
    if not secret or not settings.node_name or presented is None:
        return False
    return hmac.compare_digest(presented.encode("utf-8", "replace"), secret.encode())


class LocalLease(Protocol):
    """What a ``RemoteLease`` needs of the local lease it falls back to (``scheduling.lease.Lease``)."""

    @property
    def base_url(self) -> str: ...
    @property
    def auth_header(self) -> bytes | None: ...
    @property
    def connections(self) -> int | None: ...
    @property
    def load_duration_ns(self) -> int: ...

    prefix: str

    def release(self) -> None: ...
    def keep_alive(self, seconds: float | None) -> None: ...


@functools.lru_cache(maxsize=256)  # asked twice per forwarded request, of a handful of URLs
def _split(url: str) -> tuple[str, str]:
    """``http://host:port/prefix`` → (``http://host:port``, ``/prefix``)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}", parts.path.rstrip("/")


class OtherKindNext(Exception):
    """The next place to try is of another kind (this node, a peer) than the request was written for:
    its caller serves the rest its own way (``rest``: the places left, best first)."""

    def __init__(self, rest: list[Target]) -> None:
        super().__init__(f"next: {rest[0].kind.value} {rest[0].name}")
        self.rest = rest


class RemoteLease:
    """A request's hold on a place elsewhere, with the places after it to fail over to.

    ``local_body`` makes the request's body again for this node's own instance when the lease falls
    back to it (its sampling overrides applied, as for a request served here from the start).
    ``one_kind`` keeps the lease to places of its first place's kind: failing over to another kind
    raises ``OtherKindNext`` instead, for a request whose body only that kind understands (an Ollama
    body forwarded as it came goes to another LlamaMan, never to a llama-server or a peer)."""

    def __init__(
        self,
        cluster: Cluster,
        model: str,
        targets: list[Target],
        acquire_local: Callable[[], Awaitable[LocalLease]],
        *,
        local_body: Callable[[Any], bytes] | None = None,
        one_kind: bool = False,
    ) -> None:
        self.cluster = cluster
        self.model_name = model
        self.targets = targets
        self.index = 0
        self.local: LocalLease | None = None
        self._acquire_local = acquire_local
        self._local_body = local_body
        self._local_content: bytes | None = None
        self._one_kind = one_kind
        self.tried: list[str] = []
        self._held: str | None = None
        self._hold()

    def _hold(self) -> None:
        # The entry node's own live count of what it sent where: heartbeats are a second old.
        if self.local is None and self.target.kind is Kind.NODE:
            self._held = self.target.name
            self.cluster.sent(self._held, +1)

    def _unhold(self) -> None:
        if self._held is not None:
            self.cluster.sent(self._held, -1)
            self._held = None

    @property
    def target(self) -> Target:
        return self.targets[self.index]

    @property
    def node(self) -> str | None:
        return None if self.local is not None else self.target.name

    @property
    def load_duration_ns(self) -> int:
        return self.local.load_duration_ns if self.local is not None else 0

    @property
    def base_url(self) -> str:
        return self.local.base_url if self.local is not None else _split(self.target.url)[0]

    @property
    def prefix(self) -> str:
        return self.local.prefix if self.local is not None else _split(self.target.url)[1]

    @property
    def connections(self) -> int | None:
        # Another LlamaMan queues for its own llama-servers; a peer's server is not ours to size.
        return self.local.connections if self.local is not None else None

    @property
    def auth_header(self) -> bytes | None:
        if self.local is not None:
            return self.local.auth_header
        key = self.target.api_key
        return f"Bearer {key}".encode() if self.target.kind is Kind.PEER and key else None

    @property
    def extra_headers(self) -> tuple[tuple[bytes, bytes], ...]:
        if self.local is not None or self.target.kind is not Kind.NODE:
            return ()
        return self.cluster.node_headers()

    async def fail_over(self, reason: str) -> bool:
        """Mark this place failed and move to the next; False when none is left."""
        if self.local is not None:
            return False
        self.tried.append(self.target.name)
        self.cluster.mark_failed(self.target, reason)
        self._unhold()
        first = self.targets[0].kind
        while self.index + 1 < len(self.targets):
            self.index += 1
            if self._one_kind and self.target.kind is not first:
                raise OtherKindNext(self.targets[self.index :])
            if self.target.kind is not Kind.SELF:
                self._hold()
                return True
            try:
                self.local = await self._acquire_local()
                return True
            except (LlamaManError, TimeoutError) as exc:
                log.info("no local fallback for %s: %s", self.model_name, exc)
        return False

    def content_for_place(self, content: bytes | None) -> bytes | None:
        """The body for the current place: as given, or remade for this node's own instance."""
        if self.local is None or self._local_body is None or content is None:
            return content
        if self._local_content is None:
            self._local_content = self._local_body(self.local)
        return self._local_content

    def keep_alive(self, seconds: float | None) -> None:
        if self.local is not None:
            self.local.keep_alive(seconds)

    def release(self) -> None:
        self._unhold()
        if self.local is not None:
            self.local.release()


class Cluster:
    """Where requests go when this node is one of several, or has peers."""

    def __init__(self, settings: Settings, nodes: NodeRegistry, peers: PeerDirectory) -> None:
        self.settings = settings
        self.nodes = nodes
        self.peers = peers
        # Per-key requests per minute, counted across every entry node.
        self.rates = SharedRates(nodes.db)
        # A node that failed a request → its heartbeat time then: skipped until a newer heartbeat.
        self._failed: dict[str, float] = {}
        # Requests this node has at each other node right now.
        self._sent: dict[str, int] = {}
        self._failures = 0
        self._states: list[NodeState] = []
        self._states_key: tuple[object, ...] | None = None
        # Plans made under the current node states, by what else a plan depends on.
        self._plans: dict[tuple[object, ...], tuple[Target, ...]] = {}
        self._plans_for: tuple[object, ...] | None = None

    def sent(self, node: str, delta: int) -> None:
        n = self._sent.get(node, 0) + delta
        if n > 0:
            self._sent[node] = n
        else:
            self._sent.pop(node, None)

    @property
    def clustered(self) -> bool:
        return self.nodes.enabled and bool(self.settings.node_secret)

    def node_headers(self) -> tuple[tuple[bytes, bytes], ...]:
        secret = (self.settings.node_secret or "").encode()
        return ((NODE_HEADER.encode(), secret), (VIA_HEADER.encode(), self.nodes.name.encode()))

    def mark_failed(self, target: Target, reason: str) -> None:
        log.warning("%s %s failed a request: %s", target.kind.value, target.name, reason)
        self._failures += 1
        if target.kind is Kind.NODE:
            view = next((v for v in self.nodes.nodes() if v.name == target.name), None)
            self._failed[target.name] = view.heartbeat_at if view is not None else float("inf")
        elif target.kind is Kind.PEER:
            self.peers.mark_failed(target.name, reason)

    def node_states(self) -> list[NodeState]:
        """The other nodes in rotation, less those that failed since their last heartbeat."""
        if not self.clustered:
            return []
        # Asked once per request: the answer only changes with a heartbeat, a failure, a request
        # sent or finished, or a node's silence passing the timeout (checked to a tenth of a second).
        key = (self.nodes.version, self._failures, tuple(self._sent.items()), int(self.nodes.clock() * 10))
        if key == self._states_key:
            return self._states
        self._states, self._states_key = self._node_states(), key
        return self._states

    def _node_states(self) -> list[NodeState]:
        out = []
        for v in self.nodes.others():
            failed_at = self._failed.get(v.name)
            if failed_at is not None:
                if v.heartbeat_at <= failed_at:
                    continue
                del self._failed[v.name]
            info = v.info
            sent = self._sent.get(v.name, 0)
            if sent > (info.get("inflight") or 0) + (info.get("queued") or 0):
                # What its last heartbeat reported is older than what this node has sent it since.
                info = {**info, "inflight": sent, "queued": 0}
            # Its proxy port when it names one (cheaper per request than the main port).
            url = info.get("proxy_url") if isinstance(info.get("proxy_url"), str) else v.url
            out.append(NodeState(v.name, url or v.url, info))
        return out

    def targets(self, model: str, here: Here | None, aliases: Mapping[str, str]) -> list[Target]:
        states = self.node_states()
        peers = tuple(self.peers.states())
        if self._plans_for != self._states_key:
            self._plans, self._plans_for = {}, self._states_key
        # A plan is pure: the same name, alias, view of this node, node states and peers give the same
        # places. Requests at a steady rate ask the same question many times between two heartbeats.
        key = (model, resolve_alias(model, aliases), here, peers)
        made = self._plans.get(key)
        if made is None:
            if len(self._plans) >= 512:  # many names or changing loads: start again, never grow
                self._plans.clear()
            made = self._plans[key] = tuple(plan(model, here, states, peers, aliases=aliases))
        return list(made)
