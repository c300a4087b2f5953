"""An instance as the rest of LlamaMan sees it: its stored record joined with its live process."""

from __future__ import annotations

import time
from typing import Any

from llamaman.core.errors import Conflict, Invalid, LlamaManError, NotFound, Rejected, Unavailable
from llamaman.core.redact import redact_argv
from llamaman.core.state import InstanceState
from llamaman.core.tables import Instance
from llamaman.instances.launch import LaunchSettings
from llamaman.instances.process import LlamaProcess
from llamaman.instances.server_log import group_usage


class InstanceError(LlamaManError):
    """A request about instances that cannot be honoured; raised as one of the kinds below."""


class InstanceInvalid(InstanceError, Invalid):
    pass


class InstanceNotFound(InstanceError, NotFound):
    pass


class InstanceConflict(InstanceError, Conflict):
    pass


class InstanceRejected(InstanceError, Rejected):
    pass


class InstanceUnavailable(InstanceError, Unavailable):
    pass


class ManagedInstance:
    """A stored instance record joined with its live process."""

    def __init__(self, record: Instance, settings: LaunchSettings, proc: LlamaProcess) -> None:
        self.record = record
        self._id = record.id
        self.settings = settings
        self.proc = proc
        self.last_used = time.monotonic()
        self.listener_active = False
        self._connections: tuple[LaunchSettings, int] | None = None

    @property
    def id(self) -> str:
        # Asked several times per request: a plain attribute, not the row's instrumented one.
        return self._id

    @property
    def state(self) -> InstanceState:
        return self.proc.state

    @property
    def upstream_port(self) -> int:
        """Where llama-server itself listens."""
        return self.record.internal_port or self.record.port

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.upstream_port}"

    @property
    def connections(self) -> int:
        """How many requests the proxy sends its llama-server at once (``http_connections``)."""
        cached = self._connections
        if cached is None or cached[0] is not self.settings:  # settings are replaced, never changed
            cached = self._connections = (self.settings, self.settings.http_connections())
        return cached[1]

    def view(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        r, p = self.record, self.proc
        uptime = time.time() - p.started_at if p.started_at and p.running else 0.0
        out: dict[str, Any] = {
            "id": r.id,
            "model_path": r.model_path,
            "model_name": r.model_name,
            "port": r.port,
            "internal_port": r.internal_port,
            "status": p.state.value,
            "pid": p.pid,
            "exit_code": p.exit_code,
            "error": p.error,
            "origin": r.origin,
            "created_at": r.created_at,
            "started_at": p.started_at,
            "uptime_seconds": round(uptime, 1),
            "load_seconds": p.load_seconds,
            "command": redact_argv(p.argv),  # what an admin sees: secret values masked
            "settings": self.settings.model_dump(),
            **group_usage(p.pid),
        }
        if extra:
            out.update(extra)
        return out
