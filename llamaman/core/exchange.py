"""The record of one proxied request, shared by whoever observes the relay."""

from __future__ import annotations

import asyncio
import contextvars
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from llamaman.core.identity import Identity, current_identity

# The id a request got while it waited in the queue: the record made once it runs keeps it, so the
# in-flight list shows one request, not two, across the two phases.
REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("llamaman_request_id", default=None)
# The node that forwarded the current request here (set by the auth middleware when the request
# carries the node secret); None for a request a client sent to this node directly.
FORWARDED_BY: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "llamaman_forwarded_by", default=None
)


def new_request_id() -> str:
    # Ids only name requests in the in-flight list (cancelling one takes an admin): unique is
    # enough, and this is a system call cheaper than ``secrets`` on every request.
    return f"{_ids.getrandbits(48):012x}"


_ids = random.Random(secrets.randbits(64))


def _request_id() -> str:
    return REQUEST_ID.get() or new_request_id()


class Phase(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"


@dataclass
class Exchange:
    """What happened on one proxied request: read by the activity log, the metrics and the
    in-flight list (which may abort it)."""

    model: str
    endpoint: str
    started: float = field(default_factory=time.monotonic)
    first_byte: float | None = None
    finished: float | None = None
    status: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
    stream: bool = False
    # Stream events relayed so far (each ``data:`` line of a stream, roughly one per token): counted
    # on the raw bytes as they pass, so "tokens so far" costs no parsing.
    progress_tokens: int = 0
    # Who asked (API key or user), taken from the auth middleware's context when the exchange is made.
    identity: Identity | None = field(default_factory=current_identity)
    id: str = field(default_factory=_request_id)
    phase: Phase = Phase.RUNNING
    # How long this request waited for its model to load (a cold start); None when it was loaded.
    load_ms: float | None = None
    # Why the request was aborted (an administrator cancelled it, its client left); None while not.
    cancelled: str | None = None
    # The node that served the request (another node or a peer when it was forwarded); None: this one.
    node: str | None = None
    # The node that forwarded it here; that node keeps the activity row and the key's usage.
    via: str | None = field(default_factory=FORWARDED_BY.get)
    _abort_hooks: list[Callable[[], object]] = field(default_factory=list, repr=False, compare=False)
    _aborted: asyncio.Event | None = field(default=None, repr=False, compare=False)

    @property
    def ttft_ms(self) -> float | None:
        return (self.first_byte - self.started) * 1000 if self.first_byte else None

    def note_load(self, load_ns: int) -> None:
        """Keep the cold start this request waited through (its lease's load time), if any."""
        if load_ns > 0:
            self.load_ms = load_ns / 1e6

    def on_abort(self, hook: Callable[[], object]) -> None:
        """Call ``hook`` when the request is aborted (at once if it already was)."""
        if self.cancelled is not None:
            hook()
        else:
            self._abort_hooks.append(hook)

    def off_abort(self, hook: Callable[[], object]) -> None:
        """Forget ``hook`` (what it would stop is over)."""
        if hook in self._abort_hooks:
            self._abort_hooks.remove(hook)

    def abort(self, reason: str) -> bool:
        """Stop the request for ``reason``; False if it was already stopped."""
        if self.cancelled is not None or self.finished is not None:
            return False
        self.cancelled = reason
        if self._aborted is not None:
            self._aborted.set()
        hooks, self._abort_hooks = self._abort_hooks, []
        for hook in hooks:
            hook()
        return True

    async def wait_aborted(self) -> str:
        if self._aborted is None:
            self._aborted = asyncio.Event()
            if self.cancelled is not None:
                self._aborted.set()
        await self._aborted.wait()
        return self.cancelled or ""

    def absorb_usage(self, obj: dict[str, Any]) -> None:
        """Pick token counts out of an OpenAI/llama-server response object or stream chunk."""
        usage = obj.get("usage")
        if isinstance(usage, dict):
            self.prompt_tokens = int(
                usage.get("prompt_tokens") or usage.get("input_tokens") or self.prompt_tokens
            )
            self.completion_tokens = int(
                usage.get("completion_tokens") or usage.get("output_tokens") or self.completion_tokens
            )
        if not isinstance(usage, dict) and ("eval_count" in obj or "prompt_eval_count" in obj):
            # Ollama's own final object: what another node answered to a forwarded Ollama request.
            self.prompt_tokens = int(obj.get("prompt_eval_count") or self.prompt_tokens)
            self.completion_tokens = int(obj.get("eval_count") or self.completion_tokens)
            return
        timings = obj.get("timings")
        if isinstance(timings, dict) and not isinstance(usage, dict):
            # prompt_n counts only the tokens evaluated now; cache_n the prompt reused from the cache.
            prompt = int(timings.get("prompt_n") or 0) + int(timings.get("cache_n") or 0)
            self.prompt_tokens = prompt or self.prompt_tokens
            self.completion_tokens = int(timings.get("predicted_n") or self.completion_tokens)


Observer = Callable[[Exchange], None]
