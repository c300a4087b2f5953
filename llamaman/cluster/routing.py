"""Where a request for a model goes when several nodes (and static peers) could serve it.

Pure: the caller gathers what this node knows of itself, of the other nodes (their last heartbeats)
and of the peers (their last model lists); ``plan`` orders the places to try. The forwarding itself
is in ``cluster.forward``.

Order, first to last:

1. nodes where the model is resident with room, least loaded first (this node first on a tie: no hop);
2. nodes that have its file and would load it, most free memory first (this node first on a tie);
3. peers whose list has it (and whose filter lets it through), by name.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Kind(StrEnum):
    SELF = "self"
    NODE = "node"
    PEER = "peer"


@dataclass(frozen=True)
class Target:
    """One place to send a request: this node, another node (by its URL) or a peer."""

    kind: Kind
    name: str
    url: str = ""
    api_key: str | None = None


@dataclass(frozen=True)
class Here:
    """What this node can do for the model right now."""

    name: str
    on_disk: bool
    resident: bool
    room: bool = True
    inflight: int = 0
    free_memory: int = 0
    capacity: int = 0  # requests its loaded copies run at once; 0: not capped


@dataclass(frozen=True)
class NodeState:
    """Another node as its last heartbeat described it (``NodeView`` of the nodes table)."""

    name: str
    url: str
    info: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PeerState:
    """A static peer and the models it listed last."""

    name: str
    base_url: str
    models: tuple[str, ...] = ()
    model_filter: tuple[str, ...] = ()
    api_key: str | None = None


def normalise(name: str) -> str:
    """A model name the way names are compared: case folded, without ``:latest`` or ``.gguf``."""
    n = name.strip().casefold()
    n = n.removesuffix(":latest")
    return n.removesuffix(".gguf")


def name_matches(wanted: str, listed: str) -> bool:
    """Whether a listed name stands for the requested one: equal as the proxy compares names, or
    one is the other's file stem inside a folder (``org/model`` against ``model``)."""
    w, n = normalise(wanted), normalise(listed)
    if not w or not n:
        return False
    return w == n or n.rsplit("/", 1)[-1] == w or w.rsplit("/", 1)[-1] == n


def resolve_alias(model: str, aliases: Mapping[str, str]) -> str:
    """The name an alias points at (aliases are shared by every node); the name itself otherwise."""
    base = model.removesuffix(":latest")
    return aliases.get(model) or aliases.get(base) or model


def listed(wanted: str, names: Iterable[Any]) -> bool:
    return any(isinstance(n, str) and name_matches(wanted, n) for n in names)


def passes_filter(model: str, patterns: Iterable[str]) -> bool:
    """A peer's filter: fnmatch patterns, case-insensitive; none means every model."""
    pats = [p.strip() for p in patterns if p.strip()]
    if not pats:
        return True
    m = model.strip().casefold()
    return any(fnmatch.fnmatchcase(m, p.casefold()) for p in pats)


def parse_filter(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


def free_memory(info: Mapping[str, Any]) -> int:
    """Free bytes a node reported: ``memory`` as a number, ``{"free": n}`` or a list of devices."""
    memory = info.get("memory")
    if isinstance(memory, bool):
        return 0
    if isinstance(memory, int | float):
        return int(memory)
    if isinstance(memory, Mapping):
        for key in ("free", "free_bytes", "available"):
            value = memory.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool):
                return int(value)
        devices = memory.get("devices")
        if isinstance(devices, list):
            return sum(free_memory({"memory": d}) for d in devices)
    if isinstance(memory, list):
        return sum(free_memory({"memory": d}) for d in memory)
    return 0


def _inflight(info: Mapping[str, Any]) -> int:
    value = info.get("inflight")
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


def _room(info: Mapping[str, Any], wanted: str = "") -> bool:
    """A resident model has room unless the node says it is full: its ``capacity`` (a number for the
    node, or per model name) reached, or the model among ``models_full``."""
    if wanted and listed(wanted, info.get("models_full") or ()):
        return False
    capacity = _capacity(info, wanted)
    return capacity <= 0 or _inflight(info) < capacity


def _load_ratio(load: int, capacity: int) -> int:
    """Requests held per slot (in thousandths): where a request waits least for a slot."""
    return load * 1000 // capacity if capacity > 0 else load * 1000


def _capacity(info: Mapping[str, Any], wanted: str) -> int:
    capacity = info.get("capacity")
    if isinstance(capacity, Mapping):
        capacity = next((c for name, c in capacity.items() if listed(wanted, (name,))), None)
    return capacity if isinstance(capacity, int) and not isinstance(capacity, bool) else 0


def plan(
    model: str,
    here: Here | None,
    nodes: Iterable[NodeState],
    peers: Iterable[PeerState] = (),
    *,
    aliases: Mapping[str, str] | None = None,
    skip: frozenset[str] = frozenset(),
) -> list[Target]:
    """The places to try for ``model``, best first; ``skip`` names nodes and peers that just failed."""
    wanted = resolve_alias(model, aliases or {})
    resident: list[tuple[int, int, str, Target]] = []
    loadable: list[tuple[int, int, int, str, Target]] = []
    # A place where the model is loaded but full is the last of the loadable ones: a request waits
    # there for a slot only when no node with the file can start another copy.
    if here is not None and here.name not in skip:
        me = Target(Kind.SELF, here.name)
        if here.resident and here.room:
            resident.append((here.inflight, 0, here.name, me))
        elif here.resident:
            loadable.append((1, _load_ratio(here.inflight, here.capacity), 0, here.name, me))
        elif here.on_disk:
            loadable.append((0, -here.free_memory, 0, here.name, me))
    for node in nodes:
        if node.name in skip or (here is not None and node.name == here.name) or not node.url:
            continue
        info = node.info
        target = Target(Kind.NODE, node.name, node.url)
        loaded = listed(wanted, info.get("models_resident") or ())
        if loaded and _room(info, wanted):
            resident.append((_inflight(info), 1, node.name, target))
        elif loaded:
            load = _inflight(info) + _inflight({"inflight": info.get("queued")})
            loadable.append((1, _load_ratio(load, _capacity(info, wanted)), 1, node.name, target))
        elif listed(wanted, info.get("models_on_disk") or ()):
            loadable.append((0, -free_memory(info), 1, node.name, target))
    out = [t for *_, t in sorted(resident, key=lambda r: r[:3])]
    out += [t for *_, t in sorted(loadable, key=lambda r: r[:4])]
    for peer in sorted(peers, key=lambda p: p.name):
        if peer.name in skip or not passes_filter(wanted, peer.model_filter):
            continue
        if listed(wanted, peer.models) or (model != wanted and listed(model, peer.models)):
            out.append(Target(Kind.PEER, peer.name, peer.base_url, peer.api_key))
    return out
