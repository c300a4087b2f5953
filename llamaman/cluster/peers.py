"""Static peers: OpenAI-compatible endpoints that are not LlamaMan (llama-swap, an Ollama box, any
server with ``/v1/models``), kept in the shared ``peer`` table, polled for their model lists.

A peer's failure is kept on its status, never raised: a peer that is down only drops out of the
lists and of routing until it answers again.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlmodel import select

from llamaman.cluster.routing import PeerState, parse_filter, passes_filter
from llamaman.core.db import Database
from llamaman.core.errors import Conflict, NotFound, Rejected
from llamaman.core.tables import Peer
from llamaman.core.tasks import cancel_and_wait, wait_event

log = logging.getLogger(__name__)

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# fnmatch globs: anything printable except the separator and spaces, brackets balanced.
_PATTERN = re.compile(r"[^\s,]{1,200}")
POLL_SECONDS = 5.0
POLL_TIMEOUT = 3.0


class PeerInvalid(Rejected):
    pass


class PeerNotFound(NotFound):
    pass


class PeerExists(Conflict):
    pass


def peer_base(url: str) -> str:
    """The base URL as kept: no trailing slash, and no trailing ``/v1`` (routes add their own)."""
    return url.strip().rstrip("/").removesuffix("/v1").rstrip("/")


def validate(name: str | None, base_url: str | None, model_filter: str | None) -> None:
    """Refuse what cannot work, saying what to change."""
    if name is not None and not _NAME.fullmatch(name):
        raise PeerInvalid(
            "a peer's name is 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    if base_url is not None:
        parts = urlsplit(base_url.strip())
        if parts.scheme != "http" or not parts.hostname or parts.query or parts.fragment:
            raise PeerInvalid(
                f"base_url must be an http:// URL like http://10.0.0.7:8080 (got {base_url[:200]!r})"
            )
        try:
            parts.port  # noqa: B018 - a port out of range raises here
        except ValueError:
            raise PeerInvalid(f"base_url has an invalid port ({base_url[:200]!r})") from None
    if model_filter is not None:
        for pattern in parse_filter(model_filter):
            if not _PATTERN.fullmatch(pattern) or pattern.count("[") != pattern.count("]"):
                raise PeerInvalid(
                    f"model_filter is comma-separated fnmatch patterns like 'qwen*,llama-3*'; "
                    f"{pattern[:100]!r} is not one"
                )


@dataclass
class PeerStatus:
    """What the last poll of one peer found."""

    models: tuple[str, ...] = ()
    ok: bool = False
    error: str | None = None
    checked_at: float | None = None
    failed_until: float = 0.0  # a request failed on it: out of routing until its next good poll
    failed_at: float = 0.0  # when (monotonic) that request failed


@dataclass
class PeerView:
    row: Peer
    status: PeerStatus = field(default_factory=PeerStatus)

    def public(self) -> dict[str, Any]:
        """The peer as the API shows it: the key never, only whether one is set."""
        r, st = self.row, self.status
        return {
            "name": r.name,
            "base_url": r.base_url,
            "model_filter": r.model_filter,
            "enabled": r.enabled,
            "has_api_key": bool(r.api_key),
            "created_at": r.created_at,
            "ok": st.ok,
            "error": st.error,
            "checked_at": st.checked_at,
            "models": list(self.models),
        }

    @property
    def models(self) -> tuple[str, ...]:
        pats = parse_filter(self.row.model_filter)
        return tuple(m for m in self.status.models if passes_filter(m, pats))


class PeerDirectory:
    """The peers table, a copy of it in memory, and the poller that reads each peer's model list."""

    def __init__(self, db: Database, http: httpx.AsyncClient, poll_seconds: float = POLL_SECONDS) -> None:
        self.db = db
        self.http = http
        self.poll_seconds = poll_seconds
        self._peers: dict[str, PeerView] = {}
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    # ---- the table ----------------------------------------------------------------------------
    def _read(self) -> list[Peer]:
        with self.db.session() as s:
            rows = list(s.exec(select(Peer)).all())
            for r in rows:
                s.expunge(r)
            return rows

    async def reload(self) -> None:
        rows = await asyncio.to_thread(self._read)
        fresh = {}
        for r in rows:
            old = self._peers.get(r.name)
            kept = old is not None and old.row.base_url == r.base_url
            fresh[r.name] = PeerView(r, old.status if old is not None and kept else PeerStatus())
        self._peers = fresh

    @property
    def configured(self) -> bool:
        """Whether any peer is stored (asked on every request: no list is built for it)."""
        return bool(self._peers)

    def views(self) -> list[PeerView]:
        return [self._peers[n] for n in sorted(self._peers)]

    def get(self, name: str) -> PeerView:
        view = self._peers.get(name)
        if view is None:
            raise PeerNotFound(f"no peer named '{name}'")
        return view

    async def create(
        self, name: str, base_url: str, api_key: str | None, model_filter: str, enabled: bool
    ) -> PeerView:
        validate(name, base_url, model_filter)
        await self.reload()
        if name in self._peers:
            raise PeerExists(f"a peer named '{name}' exists already; change it with PUT /api/peers/{name}")
        row = Peer(
            name=name, base_url=peer_base(base_url), api_key=api_key or None,
            model_filter=",".join(parse_filter(model_filter)), enabled=enabled,
        )  # fmt: skip
        await asyncio.to_thread(self._write, row)
        await self.reload()
        self._wake.set()
        return self.get(name)

    async def update(self, name: str, changes: dict[str, Any]) -> PeerView:
        validate(None, changes.get("base_url"), changes.get("model_filter"))
        await self.reload()
        row = self.get(name).row
        if "base_url" in changes:
            row.base_url = peer_base(changes["base_url"])
        if "model_filter" in changes:
            row.model_filter = ",".join(parse_filter(changes["model_filter"]))
        if "api_key" in changes:  # "" or null clears it
            row.api_key = changes["api_key"] or None
        if "enabled" in changes:
            row.enabled = bool(changes["enabled"])
        await asyncio.to_thread(self._write, row)
        await self.reload()
        self._wake.set()
        return self.get(name)

    async def delete(self, name: str) -> None:
        await self.reload()
        self.get(name)
        await asyncio.to_thread(self._delete, name)
        self._peers.pop(name, None)

    def _write(self, row: Peer) -> None:
        with self.db.session() as s:
            s.merge(row)
            s.commit()

    def _delete(self, name: str) -> None:
        with self.db.session() as s:
            row = s.get(Peer, name)
            if row is not None:
                s.delete(row)
                s.commit()

    # ---- routing's view -----------------------------------------------------------------------
    def states(self) -> list[PeerState]:
        """The enabled peers that answered their last poll and are not marked failed."""
        now = time.monotonic()
        return [
            PeerState(v.row.name, v.row.base_url, v.models, parse_filter(v.row.model_filter), v.row.api_key)
            for v in self.views()
            if v.row.enabled and v.status.ok and v.status.failed_until <= now
        ]

    def mark_failed(self, name: str, reason: str) -> None:
        """A request failed on the peer: skip it until a poll finds it answering again."""
        view = self._peers.get(name)
        if view is not None:
            view.status.failed_at = time.monotonic()
            view.status.failed_until = view.status.failed_at + self.poll_seconds * 2
            view.status.error = reason

    # ---- polling ------------------------------------------------------------------------------
    async def poll(self, view: PeerView) -> None:
        st = view.status
        headers = {"Authorization": f"Bearer {view.row.api_key}"} if view.row.api_key else {}
        asked = time.monotonic()
        try:
            r = await self.http.get(f"{view.row.base_url}/v1/models", headers=headers, timeout=POLL_TIMEOUT)
            r.raise_for_status()
            data = r.json().get("data")
            if not isinstance(data, list):
                raise ValueError("its /v1/models answer has no 'data' list")
            st.models = tuple(str(m["id"]) for m in data if isinstance(m, dict) and m.get("id"))
            st.ok = True
            # A request that failed after this poll asked is the newer word: it stands.
            if st.failed_at <= asked:
                st.error, st.failed_until = None, 0.0
        except (httpx.HTTPError, ValueError, AttributeError) as exc:
            st.ok, st.error = False, f"{exc.__class__.__name__}: {exc}"[:500]
        st.checked_at = time.time()

    async def poll_all(self) -> None:
        try:
            await self.reload()
        except Exception as exc:  # the database away for a while: poll the peers we know
            log.debug("peer table not read: %s", exc)
        views = [v for v in self.views() if v.row.enabled]
        await asyncio.gather(*(self.poll(v) for v in views))

    async def _loop(self) -> None:
        while True:
            try:
                await self.poll_all()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("peer poll failed")
            self._wake.clear()
            await wait_event(self._wake, self.poll_seconds)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="peer-poller")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
