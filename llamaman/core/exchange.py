"""The record of one proxied request, shared by whoever observes the relay."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from llamaman.core.identity import Identity, current_identity


@dataclass
class Exchange:
    """What happened on one proxied request: read by the activity log and the metrics."""

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

    @property
    def ttft_ms(self) -> float | None:
        return (self.first_byte - self.started) * 1000 if self.first_byte else None

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
        timings = obj.get("timings")
        if isinstance(timings, dict) and not isinstance(usage, dict):
            # prompt_n counts only the tokens evaluated now; cache_n the prompt reused from the cache.
            prompt = int(timings.get("prompt_n") or 0) + int(timings.get("cache_n") or 0)
            self.prompt_tokens = prompt or self.prompt_tokens
            self.completion_tokens = int(timings.get("predicted_n") or self.completion_tokens)


Observer = Callable[[Exchange], None]
