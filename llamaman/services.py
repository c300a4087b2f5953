"""The services of one LlamaMan process, built once and shared by the APIs, the proxy and the UI."""

from __future__ import annotations

import asyncio
import logging

import httpx

from llamaman.config import Settings
from llamaman.db import Database
from llamaman.events import EventBus
from llamaman.library import ModelLibrary
from llamaman.presets import PresetStore
from llamaman.runtime import RuntimeConfig
from llamaman.supervisor import Supervisor

log = logging.getLogger(__name__)


def make_http_client() -> httpx.AsyncClient:
    # One client for the app's lifetime: pooled keep-alive connections to every llama-server.
    # No overall timeout: streams may run long; callers set per-request limits.
    return httpx.AsyncClient(
        timeout=httpx.Timeout(None, connect=5.0),
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=256, keepalive_expiry=30),
        trust_env=False,
    )


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
        self.supervisor = Supervisor(settings, self.db, self.events, self.library, self.http)
        self.started = False

    async def start(self) -> None:
        if self.started:
            return
        await asyncio.to_thread(self.db.migrate)
        await self.runtime.load()
        await self.library.ascan()
        await self.supervisor.start()
        self.started = True

    async def stop(self) -> None:
        if not self.started:
            return
        self.started = False
        await self.supervisor.shutdown()
        await self.http.aclose()
        self.db.dispose()
