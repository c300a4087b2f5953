"""What a node tells the others on each heartbeat: its models on disk and in memory, its memory per
device as the scheduler sees it, and how busy it is.

It runs every second, so it only reads what the services already hold in memory: the library's last
scan (rescanned here now and then, so a file dropped into MODELS_DIR reaches the other nodes too),
the supervisor's instances, the scheduler's device readings and the relay's in-flight requests.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

from llamaman import __version__
from llamaman.core.exchange import Phase
from llamaman.core.state import InstanceState
from llamaman.instances.supervisor import Supervisor
from llamaman.library.catalog import ModelEntry, ModelLibrary
from llamaman.scheduling.memory import HOLDS_MEMORY
from llamaman.scheduling.router import Router
from llamaman.upstream.relay import Relay

# Serving, or about to: a request for these models goes to this node before any other.
RESIDENT_STATES = frozenset({InstanceState.HEALTHY, InstanceState.STARTING})
# A scan only stats unchanged files, but it is still a walk of MODELS_DIR: not every second.
RESCAN_EVERY_S = 10.0


def listed_names(models: list[ModelEntry]) -> dict[str, ModelEntry]:
    """The launchable models under the names the model endpoints list them by: the file stem, or
    ``folder/stem`` where two files share a stem (as ``proxy.ollama_models.Names`` does)."""
    launchable = [e for e in models if e.launchable]
    counts = Counter(e.name.casefold() for e in launchable)
    out: dict[str, ModelEntry] = {}
    for e in launchable:
        name = (Path(e.rel_path).parent / e.name).as_posix() if counts[e.name.casefold()] > 1 else e.name
        out[name] = e
    return out


class HeartbeatInfo:
    """The info callable of ``NodeRegistry``: one dict per beat, cheap to build."""

    def __init__(
        self,
        library: ModelLibrary,
        supervisor: Supervisor,
        router: Router,
        relay: Relay,
        proxy_url: str | None = None,
    ) -> None:
        # The proxy port beside LLAMAMAN_NODE_URL's main port: a forwarded request costs less there
        # (the main port also carries the UI's sessions and pages).
        self.proxy_url = proxy_url
        self.library = library
        self.supervisor = supervisor
        self.router = router
        self.relay = relay
        self._scanned = time.monotonic()  # Services.start scanned the library just before

    async def __call__(self) -> dict[str, Any]:
        if time.monotonic() - self._scanned >= RESCAN_EVERY_S:
            self._scanned = time.monotonic()
            await self.library.ascan()
        return self.build()

    def build(self) -> dict[str, Any]:
        models = listed_names(self.library.models)
        resident = [
            {"name": m.record.model_name, "instance": m.id, "state": m.state.value}
            for m in self.supervisor.list()
            if m.state in RESIDENT_STATES
        ]
        # Per loaded model: the requests its copies may run at once (all capped), and those full.
        capacity: dict[str, int] = {}
        full: list[str] = []
        by_name: dict[str, list[Any]] = {}
        for m in self.supervisor.list():
            if m.state in RESIDENT_STATES:
                by_name.setdefault(m.record.model_name, []).append(m)
        for name, copies in by_name.items():
            caps = [m.settings.max_concurrent for m in copies]
            if 0 in caps:
                continue
            capacity[name] = sum(caps)
            taken = sum(s.inflight for m in copies if (s := self.router.slots.get(m.id)) is not None)
            if taken >= capacity[name]:
                full.append(name)
        inflight = queued = 0
        for row in self.relay.inflight.snapshot():
            if row["state"] == Phase.QUEUED:
                queued += 1
            else:
                inflight += 1
        return {
            "version": __version__,
            "models_on_disk": sorted(models),
            "model_sizes": {name: e.size_bytes for name, e in models.items()},
            "models_resident": sorted({r["name"] for r in resident}),
            "resident": resident,
            "memory": self.memory(),
            "inflight": inflight,
            "queued": queued,
            "max_models": self.router.runtime.current.max_models,
            "capacity": capacity,
            "models_full": sorted(full),
            **({"proxy_url": self.proxy_url} if self.proxy_url else {}),
        }

    def memory(self) -> list[dict[str, Any]]:
        """Each device's total, limit and free bytes from the scheduler's last readings, and what
        our models hold of it: room for one more model is ``limit - used_by_models``, within ``free``."""
        self.router.refresh_devices()
        ours: dict[str, int] = {}
        for m in self.supervisor.list():
            if m.state in HOLDS_MEMORY:
                for device, n in self.router.usage_of(m).items():
                    ours[device] = ours.get(device, 0) + n
        return [
            {
                "id": d.id,
                "name": d.name,
                "total": d.total,
                "limit": d.limit,
                "free": d.free,
                "used_by_models": ours.get(d.id, 0),
            }
            for d in self.router.devices.devices.values()
        ]
