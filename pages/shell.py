"""What every page shares: the frame filled from the services, the signed-in user and their session,
and signing out."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote

from fastapi import Request
from fastapi.responses import RedirectResponse, Response
from nicegui import app, ui

from components.connection import Endpoint
from components.frame import FrameInfo, frame
from components.gauges import GpuReading, SystemReading
from llamaman.auth.sessions import SESSION_COOKIE
from llamaman.core.identity import Identity
from llamaman.services import Services

log = logging.getLogger(__name__)

VIEWER_REFUSAL = "This account is a viewer: it can look but not change anything."


def viewer_may(element: ui.element) -> ui.element:
    """Let viewers use ``element`` and everything inside it (nothing there changes LlamaMan)."""
    element._viewer_may = True  # type: ignore[attr-defined]
    return element


def _viewer_may_use(element: ui.element | None) -> bool:
    while element is not None:
        if getattr(element, "_viewer_may", False):
            return True
        try:
            slot = element.parent_slot
        except RuntimeError:  # its container is gone: nothing to allow
            return False
        element = slot.parent if slot is not None else None
    return False


def client_endpoint(services: Services, request: Request, key: str | None = None) -> Endpoint:
    """The proxy as this browser reaches it: the host the browser used, the proxy's own port (or this
    app's origin when there is no separate proxy port, since the app serves the model APIs too)."""
    port = services.settings.proxy_port
    scheme, host = request.url.scheme, request.url.hostname or "localhost"
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    base = f"{scheme}://{host}:{port}" if port else str(request.base_url).rstrip("/")
    running = [m.record.model_name for m in services.supervisor.list() if m.state.value == "healthy"]
    names = [m.name for m in services.library.models if m.launchable]
    return Endpoint(base=base, model=next(iter(running + names), "MODEL"), key=key)


def fail(reason: object) -> None:
    ui.notify(str(reason) or reason.__class__.__name__, type="negative", multi_line=True)


class _SystemCache:
    """One system reading every 2 s however many pages are open (the reading blocks on /proc)."""

    def __init__(self) -> None:
        self.at = 0.0
        self.value: SystemReading | None = None
        self.lock = asyncio.Lock()

    async def get(self, services: Services) -> SystemReading | None:
        async with self.lock:
            if time.monotonic() - self.at >= 1.9:
                self.value = await asyncio.to_thread(_read_system, services)
                self.at = time.monotonic()
        return self.value


def _read_system(services: Services) -> SystemReading | None:
    telemetry = services.telemetry
    reading = SystemReading(gpus=[])
    data = telemetry.system.collect()
    cpu, mem = data.get("cpu", {}), data.get("memory", {})
    reading.cpu_percent = cpu.get("effective_percent", cpu.get("percent"))
    reading.ram_used = mem.get("effective_used_bytes")
    reading.ram_total = mem.get("effective_total_bytes")
    info = telemetry.gpu_info()
    reading.gpus = [
        GpuReading(
            name=f"GPU{g['index']} {g['name']}",
            mem_used=g.get("memory_used_bytes"),
            mem_total=g.get("memory_total_bytes"),
            util_percent=g.get("utilization_percent"),
            temp_c=g.get("temperature_c"),
        )
        for g in info.get("gpus", [])
    ]
    if not reading.gpus:
        reading.note = info.get("reason") or "no GPU"
    return reading


def _binary(services: Services) -> tuple[str, str, bool]:
    b = services.supervisor.binary
    if b is None:
        err = services.supervisor.binary_error or "no llama-server binary found"
        return "no llama-server", err, False
    # "b4589 (7e4c0a9d)" reads as "b4589" in the header; the tooltip has it all.
    version = b.version or "version unknown"
    return f"llama-server {version.split(' (')[0]}", f"{version} at {b.path} (found via {b.source})", True


class Shell:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.latest_system: SystemReading | None = None
        self._system = _SystemCache()

    async def system_reading(self) -> SystemReading | None:
        self.latest_system = await self._system.get(self.services)
        return self.latest_system

    def identity(self, request: Request | None = None) -> Identity | None:
        """Who the current page belongs to (None for nobody)."""
        auth = self.services.auth
        if request is None:
            try:
                request = ui.context.client.request
            except (RuntimeError, AttributeError):
                return None
        identity: Identity | None = auth.identity_of(request)
        return identity

    def read_only(self, request: Request | None = None) -> bool:
        """Whether the page's user is a viewer, who may look but not change anything."""
        identity = self.identity(request)
        return identity is not None and identity.read_only

    def guard(self, request: Request) -> tuple[str | None, Response | None]:
        """(who is signed in, None) or (None, a redirect to setup or sign-in)."""
        auth = self.services.auth
        if auth.needs_setup():
            return None, RedirectResponse("/setup", status_code=303)
        identity = auth.identity_of(request)
        if identity is None:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return None, RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)
        return identity.user or identity.name, None

    @contextmanager
    def frame(
        self, active: str, *, user: str | None, drawer: Callable[[], None] | None = None
    ) -> Iterator[ui.column]:
        binary, tip, ok = _binary(self.services)
        try:
            dark = app.storage.user.get("dark")
        except (RuntimeError, AssertionError):
            dark = None

        def set_dark(value: bool | None) -> None:
            app.storage.user["dark"] = value

        info = FrameInfo(binary=binary, binary_tip=tip, binary_ok=ok, username=user, dark=dark)
        client = ui.context.client
        token, read_only = self._session_of(client)
        header_before = set(client.elements)
        with frame(
            active,
            info,
            read_system=self._reader(token),
            on_logout=self.logout,
            on_dark=set_dark,
            drawer=drawer,
        ) as content:
            for element in [e for i, e in client.elements.items() if i not in header_before]:
                if isinstance(element, ui.header):
                    viewer_may(element)  # navigation, theme, signing out
            self._guard_events(client, token, read_only)
            yield content

    def _session_of(self, client: Any) -> tuple[str | None, bool]:
        """The page's session cookie (None when it came with an API key or without accounts) and
        whether its user is a viewer."""
        auth = self.services.auth
        try:
            request = client.request
        except (RuntimeError, AttributeError):
            return None, False
        identity = auth.identity_of(request)
        token = (
            request.cookies.get(SESSION_COOKIE) if identity is not None and identity.kind == "user" else None
        )
        return token, identity is not None and identity.read_only

    def _reader(self, token: str | None) -> Callable[[], Any]:
        """The header's 2-second tick, which also sends an open page to sign in once its session
        has ended (signed out elsewhere, password changed, account removed, expired)."""
        auth = self.services.auth

        async def read() -> SystemReading | None:
            if token is not None and not auth.session_alive(token):
                ui.navigate.to("/login")
                return self.latest_system
            return await self.system_reading()

        return read

    def _guard_events(self, client: Any, token: str | None, read_only: bool) -> None:
        """Refuse a page's events once its session has ended, and a viewer's events outside what
        ``viewer_may`` marked (the header: navigation, theme, user menu; one's own account): pages
        change things through their event handlers, which never pass the HTTP middleware."""
        auth = self.services.auth
        if token is None and not read_only:
            return
        original = client.handle_event

        def handle_event(msg: dict[str, Any]) -> None:
            viewer = read_only
            if token is not None:
                user = auth.user_from_session(token)
                if user is None:
                    with client:
                        ui.navigate.to("/login")
                    return
                viewer = not user.is_admin  # the role as it is now: an admin may have changed it
            if viewer and not _viewer_may_use(client.elements.get(msg.get("id"))):
                with client:
                    ui.notify(VIEWER_REFUSAL, type="warning")
                return
            original(msg)

        client.handle_event = handle_event

    def logout(self) -> None:
        # The cookie is HttpOnly: only a response can clear it, so the browser goes to the route that
        # ends the session and clears it.
        ui.navigate.to("/api/auth/logout?next=/login")


def subscribe(
    services: Services, prefix: str, callback: Callable[[Any], None], *, resync: Callable[[], None]
) -> None:
    """Deliver events under ``prefix`` to this page while its browser is connected.

    The callback runs inside whoever published, so failures are contained here. After a reconnect
    ``resync`` rebuilds what the page may have missed while no events arrived.
    """
    client = ui.context.client
    loop = asyncio.get_running_loop()
    state: dict[str, Callable[[], None] | None] = {"off": None}

    def update(ev: Any) -> None:
        try:
            callback(ev)
        except Exception:
            log.warning("page update for %s failed", ev.topic, exc_info=True)

    def deliver(ev: Any) -> None:
        # Elements may only change on the event loop; a publisher in a worker thread is handed over.
        try:
            same_loop = asyncio.get_running_loop() is loop
        except RuntimeError:
            same_loop = False
        if same_loop:
            update(ev)
        else:
            loop.call_soon_threadsafe(update, ev)

    def on() -> None:
        if state["off"] is None:
            state["off"] = services.events.listen(deliver, prefix)

    def off() -> None:
        stop, state["off"] = state["off"], None
        if stop is not None:
            stop()

    def reconnected() -> None:
        if state["off"] is None:
            on()
            resync()

    on()
    client.on_connect(reconnected)
    client.on_disconnect(off)
    client.on_delete(off)
