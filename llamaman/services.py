"""The core services of one LlamaMan process, built once and shared by the APIs, the proxy and the UI.

No HTTP server is started here: ``llamaman.app`` adds the proxy server and the per-instance listeners.
"""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import urlsplit

import httpx

from llamaman.auth.accounts import AuthService
from llamaman.cluster.forward import Cluster
from llamaman.cluster.heartbeat_info import HeartbeatInfo
from llamaman.cluster.nodes import NodeRegistry
from llamaman.cluster.peers import PeerDirectory
from llamaman.cluster.shared_keys import SharedKeys
from llamaman.cluster.workers import WorkerDirectory
from llamaman.core.config import Settings
from llamaman.core.db import Database
from llamaman.core.events import Event, EventBus
from llamaman.core.runtime import RuntimeConfig
from llamaman.downloads.manager import DownloadManager
from llamaman.instances.instance import InstanceConflict
from llamaman.instances.supervisor import ManagedInstance, Supervisor
from llamaman.library.catalog import ModelLibrary
from llamaman.scheduling.aliases import AliasStore
from llamaman.scheduling.devices import Reading
from llamaman.scheduling.presets import PresetStore
from llamaman.scheduling.router import Router
from llamaman.telemetry.monitor import Telemetry
from llamaman.upstream.relay import Relay

log = logging.getLogger(__name__)


def make_http_client() -> httpx.AsyncClient:
    # One client for the app's lifetime: pooled keep-alive connections to every llama-server.
    # No overall timeout: streams may run long; callers set per-request limits.
    return httpx.AsyncClient(
        timeout=httpx.Timeout(None, connect=5.0),
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=256, keepalive_expiry=30),
        trust_env=False,
    )


def _proxy_url(settings: Settings) -> str | None:
    """The proxy port on the host of LLAMAMAN_NODE_URL, for other nodes to forward to."""
    if not settings.node_url or not settings.proxy_port:
        return None
    parts = urlsplit(settings.node_url)
    if parts.hostname is None:
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}:{settings.proxy_port}"


class Services:
    def __init__(self, settings: Settings) -> None:
        settings.ensure_dirs()
        self.settings = settings
        self.events = EventBus()
        self.db = Database(settings.effective_database_url)
        self.http = make_http_client()
        self.library = ModelLibrary(settings.models_dir)
        self.runtime = RuntimeConfig(settings, self.db, self.events)
        self.presets = PresetStore(self.db, self.events)
        # Saving a preset's sampling overrides applies them to the model's running instances at once.
        self.events.listen(self._on_preset_saved, "preset.saved")
        self.supervisor = Supervisor(settings, self.db, self.events, self.library, self.http)
        self.aliases = AliasStore(self.db)
        self.router = Router(
            self.supervisor,
            self.library,
            self.presets,
            self.runtime,
            self.events,
            settings.request_timeout,
            memory_reserve=settings.memory_reserve,
            db=self.db,
        )
        # The router reads aliases from the store's dict, so /api/copy takes effect at once.
        self.router.aliases = self.aliases.aliases
        self.relay = Relay(self.http, settings.request_timeout)
        self.supervisor.on_stopping.append(lambda m: self.relay.upstream.drop_idle(m.base_url))
        # Accounts, sessions and API keys; it counts each key's tokens from the relay's exchanges.
        self.auth = AuthService(settings, self.db, self.runtime)
        self.auth.keys.wait_idle = self.router.wait_idle
        # Metrics, activity log, GPU sampling and benchmarks; it observes every proxied request.
        self.telemetry = Telemetry(
            settings, self.db, self.runtime, self.events, self.supervisor, self.router, self.auth
        )
        self.relay.add_observer(self.telemetry.observe)
        # The scheduler sits below telemetry: it gets GPU memory readings through this reader.
        self.router.gpu_reader = self._gpu_memory
        self.router.can_offload = self._can_offload

        self.relay.add_observer(self.auth.observe)
        self.downloads = DownloadManager(
            settings, self.db, self.events, self.library, self.runtime, self.aliases, self.supervisor
        )
        # This box's row among several sharing the database (idle on a standalone box).
        self.nodes = NodeRegistry(settings, self.db, events=self.events)
        self.nodes.info_provider = HeartbeatInfo(
            self.library, self.supervisor, self.router, self.relay, proxy_url=_proxy_url(settings)
        )
        self.nodes.after_beat.append(SharedKeys(self.auth.keys))
        # Static peers (OpenAI-compatible servers that are not LlamaMan) and where each request goes.
        self.peers = PeerDirectory(self.db, self.http)
        self.cluster = Cluster(settings, self.nodes, self.peers)
        # llama.cpp RPC workers (`llamaman worker`) a launch may spread a model over.
        self.workers = WorkerDirectory(settings, self.db)
        self.supervisor.check_rpc = self.workers.check_launch
        # A model too large for this box alone may be spread over them by the scheduler.
        self.router.worker_memory = self._worker_memory
        self.router.rpc_capable = lambda: (
            self.supervisor.binary is not None and self.supervisor.binary.supports_rpc
        )
        self.started = False

    async def _worker_memory(self) -> dict[str, int]:
        return {w.address: w.memory_free for w in await self.workers.workers() if w.alive}

    def _gpu_memory(self) -> list[Reading]:
        """Each GPU's memory from the sampler's latest sample, numbered as the scheduler names them."""
        readings = [r for r in self.telemetry.gpu.readings if r.memory_total]
        return [
            Reading(f"gpu{i}", r.memory_total or 0, (r.memory_total or 0) - (r.memory_used or 0), r.name)
            for i, r in enumerate(readings)
        ]

    def _can_offload(self) -> bool:
        # The embedded xllamacpp build is CPU-only; the others offload when a GPU is there.
        binary = self.supervisor.binary
        if binary is None:
            return True
        return binary.source != "xllamacpp" and not (binary.version or "").startswith("xllamacpp")

    def _on_preset_saved(self, ev: Event) -> None:
        sampling = (ev.data.get("settings") or {}).get("sampling")
        if isinstance(sampling, dict):
            self.supervisor.apply_sampling(ev.data["model_path"], sampling)

    async def delete_model(self, path: str) -> list[str]:
        """Delete a model's file(s) inside MODELS_DIR; refused (409) while a running instance uses it."""
        target = self.library.safe_path(path)
        rel = target.relative_to(self.library.models_dir).as_posix()
        entry = self.library.find(rel)
        paths = {rel, *(entry.parts if entry else ())}
        busy = [m.id for m in self.supervisor.list() if m.record.model_path in paths and m.proc.running]
        if busy:
            raise InstanceConflict(
                f"{rel} is in use by running instance(s) {', '.join(busy)}; stop them first"
            )
        removed = await asyncio.to_thread(self.library.delete, path)
        await self.library.ascan()
        self.events.publish("library.changed")
        return removed

    def instance_extra(self, m: ManagedInstance) -> dict[str, object]:
        """Live counters of an instance that the supervisor does not own (requests, expiry)."""
        loading = {"load_progress": self.supervisor.loads.progress(m.id)}
        return {**self.router.counters(m), **self.telemetry.instance_extra(m), **loading}

    async def start(self) -> None:
        if self.started:
            return
        await asyncio.to_thread(self.db.migrate)
        await self.runtime.load()
        await self.auth.start()  # before any listener opens: creates the admin from the environment
        await self.library.ascan()
        await self.aliases.load()
        self.router.aliases = self.aliases.aliases
        await self.supervisor.start()
        self.router.start()
        await self.telemetry.start()
        await self.downloads.start()  # resumes downloads a restart interrupted
        self.nodes.start()
        self.peers.start()
        self.started = True

    async def stop_listeners(self) -> None:
        """Close what listens on instance ports once their instances are down (the app has some)."""

    async def stop(self) -> None:
        if not self.started:
            return
        self.started = False
        await self.peers.stop()
        await self.nodes.stop()
        await self.downloads.stop()  # their records stay active: resumed at the next start
        await self.telemetry.stop()  # after the proxy: its last requests still reach the activity log
        await self.router.stop()
        await self.supervisor.shutdown()
        await self.stop_listeners()
        await self.auth.stop()  # writes the last token usage and last-used times
        await self.relay.upstream.aclose()
        await self.http.aclose()
        self.db.dispose()
