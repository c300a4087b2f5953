"""An in-process chat over the router and relay (the UI playground), recorded like proxied requests."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from llamaman.core.exchange import Exchange
from llamaman.scheduling.router import Router
from llamaman.upstream.relay import Relay


@dataclass
class ChatResult:
    tokens: int = 0
    ttft_ms: float | None = None
    tokens_per_s: float | None = None
    seconds: float = 0.0
    prompt_tokens: int = 0
    prompt_per_s: float | None = None  # llama-server's prompt processing rate, when it reports it


class ChatStream:
    """``pieces()`` yields the answer's text as it streams (close it early with ``aclosing`` to stop);
    ``result`` holds the figures once it is done. ``raw`` sends ``body["prompt"]`` to
    /v1/completions as it is (no chat template), for base models and template debugging."""

    def __init__(
        self, router: Router, relay: Relay, model: str, body: dict[str, Any], *, raw: bool = False
    ) -> None:
        self.router = router
        self.relay = relay
        self.model = model
        self.path = "/v1/completions" if raw else "/v1/chat/completions"
        self.body = {**body, "model": model, "stream": True, "stream_options": {"include_usage": True}}
        self.result = ChatResult()

    async def pieces(self) -> AsyncIterator[str]:
        t0 = time.monotonic()
        ex = Exchange(self.model, f"{self.path} (playground)", stream=True)
        lease = await self.router.acquire(self.model)
        ex.note_load(lease.load_duration_ns)
        pieces = 0
        timings: dict[str, Any] = {}
        try:
            upstream = await self.relay.open(
                lease,
                "POST",
                self.path,
                content=json.dumps(self.body).encode(),
                headers={"content-type": "application/json"},
            )
            ex.status = upstream.status_code
            try:
                if upstream.status_code >= 400:
                    detail = (await upstream.aread()).decode("utf-8", "replace")
                    ex.error = f"llama-server answered {upstream.status_code}: {detail[:300]}"
                    raise RuntimeError(ex.error)
                async for obj in self.relay.stream_lines(upstream):
                    ex.absorb_usage(obj)
                    timings = obj.get("timings") or timings
                    for choice in obj.get("choices") or []:
                        piece = (choice.get("delta") or {}).get("content") or choice.get("text")
                        if piece:
                            if ex.first_byte is None:
                                ex.first_byte = time.monotonic()
                            pieces += 1
                            yield piece
            finally:
                await upstream.aclose()
        finally:
            lease.release()
            self.relay.record(ex)
            end = time.monotonic()
            tokens = ex.completion_tokens or pieces
            rate = timings.get("predicted_per_second")
            if not rate and ex.first_byte and end > ex.first_byte:
                rate = tokens / (end - ex.first_byte)
            self.result = ChatResult(
                tokens,
                ex.ttft_ms,
                rate,
                end - t0,
                prompt_tokens=ex.prompt_tokens or timings.get("prompt_n") or 0,
                prompt_per_s=timings.get("prompt_per_second"),
            )
