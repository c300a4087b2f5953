"""The models of the other nodes and of the peers in this node's listings (``/v1/models``, ``/models``,
``/api/tags``): one entry per model however many places have it, with the places in fields clients
ignore (``nodes``, ``peers``); a model only elsewhere gets the same shape as a local one."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from llamaman.cluster.routing import normalise
from llamaman.core.identity import Identity
from llamaman.proxy.translate import digest_for, ollama_model_name
from llamaman.proxy.translate_stream import format_rfc3339
from llamaman.services import Services


@dataclass
class Elsewhere:
    """A model as the other nodes and the peers list it."""

    name: str
    nodes: list[str] = field(default_factory=list)
    peers: list[str] = field(default_factory=list)
    resident: bool = False

    @property
    def owner(self) -> str:
        return (self.nodes or self.peers or ["llamaman"])[0]


def elsewhere(services: Services) -> dict[str, Elsewhere]:
    """The models of the other nodes in rotation and of the peers that answer, by compared name."""
    out: dict[str, Elsewhere] = {}

    def add(name: str) -> Elsewhere:
        key = normalise(name)
        return out.setdefault(key, Elsewhere(name.removesuffix(":latest")))

    for node in services.cluster.node_states():
        resident = {normalise(n) for n in node.info.get("models_resident") or () if isinstance(n, str)}
        for name in [*(node.info.get("models_on_disk") or ()), *(node.info.get("models_resident") or ())]:
            if not isinstance(name, str) or not name.strip():
                continue
            item = add(name)
            if node.name not in item.nodes:
                item.nodes.append(node.name)
            item.resident = item.resident or normalise(name) in resident
    for peer in services.peers.states():
        for name in peer.models:
            item = add(name)
            if peer.name not in item.peers:
                item.peers.append(peer.name)
    return out


def _may(identity: Identity | None, name: str) -> bool:
    return identity is None or identity.may_use({name, name.removesuffix(":latest")})


def merge_openai(services: Services, objects: list[dict[str, Any]], identity: Identity | None) -> None:
    """Add the places to local objects and an object per model found only elsewhere."""
    extra = elsewhere(services)
    if not extra and not services.nodes.enabled:
        return
    me = services.nodes.name
    for obj in objects:
        item = extra.pop(normalise(str(obj.get("id", ""))), None)
        obj["nodes"] = [me, *(item.nodes if item else [])] if me else list(item.nodes if item else [])
        if item and item.peers:
            obj["peers"] = item.peers
    for item in sorted(extra.values(), key=lambda i: i.name):
        if not _may(identity, item.name):
            continue
        obj = {
            "id": item.name,
            "object": "model",
            "created": 0,
            "owned_by": item.owner,
            "status": {"value": "loaded" if item.resident else "unloaded"},
            "nodes": item.nodes,
        }
        if item.peers:
            obj["peers"] = item.peers
        objects.append(obj)


def merge_tags(services: Services, models: list[dict[str, Any]], identity: Identity | None) -> None:
    """``merge_openai`` for Ollama's ``/api/tags`` entries (a peer's models are chatted with through
    a translation here, see ``ollama_elsewhere``)."""
    extra = elsewhere(services)
    if not extra and not services.nodes.enabled:
        return
    me = services.nodes.name
    for obj in models:
        item = extra.pop(normalise(str(obj.get("model", ""))), None)
        obj["nodes"] = [me, *(item.nodes if item else [])] if me else list(item.nodes if item else [])
        if item and item.peers:
            obj["peers"] = item.peers
    now = time.time()
    for item in sorted(extra.values(), key=lambda i: i.name):
        if not _may(identity, item.name):
            continue
        full = ollama_model_name(item.name)
        obj = {
            "name": full,
            "model": full,
            "modified_at": format_rfc3339(now),
            "size": 0,
            "digest": digest_for(f"{item.owner}/{item.name}", 0, 0),
            "details": {
                "parent_model": "",
                "format": "gguf",
                "family": "",
                "families": [],
                "parameter_size": "",
                "quantization_level": "",
            },
            "nodes": item.nodes,
        }
        if item.peers:
            obj["peers"] = item.peers
        models.append(obj)
