"""Map llama-server replies (chat chunks, native completions, embeddings) back to Ollama objects.

Pure functions and a per-request state holder; no I/O. Durations use a monotonic clock in nanoseconds
(``time.monotonic_ns`` unless a test injects another), so ``started_ns`` must come from the same clock;
``created_at`` stamps use the wall clock.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

Clock = Callable[[], int]


def format_rfc3339(ts: float) -> str:
    """UTC RFC 3339 with microseconds and a 'Z' suffix, e.g. for a file's ``modified_at``."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def format_rfc3339_ns(ns: int) -> str:
    """UTC RFC 3339 with nanoseconds, the shape Ollama stamps on every reply object."""
    secs, frac = divmod(ns, 1_000_000_000)
    return datetime.fromtimestamp(secs, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{frac:09d}Z"


def _ms_to_ns(value: Any) -> int | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return round(value * 1_000_000)
    return None


def _count(value: Any) -> int | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return int(value)
    return None


def _error_text(error: Any) -> str:
    if isinstance(error, Mapping):
        return str(error.get("message") or error)
    return str(error)


def _parse_arguments(raw: Any) -> dict[str, Any]:
    if isinstance(raw, Mapping):
        return dict(raw)
    if not isinstance(raw, str) or not raw.strip():
        return {}
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError:
        # Only a reply cut short (finish_reason "length") leaves broken JSON here; Ollama clients
        # require an object, so an empty one is the least surprising stand-in.
        return {}
    return parsed if isinstance(parsed, dict) else {"value": parsed}


@dataclass
class _PendingCall:
    name: str = ""
    arguments: str = ""


class OllamaChatStream:
    """Turns one request's upstream chunks into Ollama NDJSON objects (chat or generate shape)."""

    def __init__(
        self,
        model: str,
        *,
        generate: bool = False,
        load_duration_ns: int = 0,
        started_ns: int,
        clock: Clock = time.monotonic_ns,
        wall_clock: Clock = time.time_ns,
    ) -> None:
        self.model = model
        self.generate = generate
        self.load_duration_ns = max(0, int(load_duration_ns))
        self.started_ns = started_ns
        self._clock = clock
        self._wall_clock = wall_clock
        self._calls: dict[int, _PendingCall] = {}
        self._finish_reason: str | None = None
        self._first_token_ns: int | None = None
        self._prompt_count: int | None = None
        self._eval_count: int | None = None
        self._prompt_ns: int | None = None
        self._eval_ns: int | None = None

    # -- feeding ---------------------------------------------------------------------------------

    def feed(self, chunk: Mapping[str, Any]) -> list[dict[str, Any]]:
        """One parsed ``/v1/chat/completions`` SSE chunk in, zero or more Ollama objects out."""
        if "error" in chunk:
            return [{"error": _error_text(chunk["error"])}]
        self._note_stats(chunk)
        out: list[dict[str, Any]] = []
        for choice in chunk.get("choices") or []:
            # Ollama has no notion of n > 1; only the first choice is relayed.
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            self._note_call_fragments(delta.get("tool_calls"))
            text = self._text_object(delta.get("content"), delta.get("reasoning_content"))
            if text is not None:
                out.append(text)
            if choice.get("finish_reason"):
                self._finish_reason = choice["finish_reason"]
                calls = self._take_tool_calls()
                if calls:
                    out.append(self._object("", None, calls, done=False))
        return out

    def feed_native(self, chunk: Mapping[str, Any]) -> list[dict[str, Any]]:
        """One parsed native ``/completion`` or ``/infill`` SSE chunk in, zero or more objects out."""
        if "error" in chunk:
            return [{"error": _error_text(chunk["error"])}]
        self._note_native_stats(chunk)
        text = self._text_object(chunk.get("content"), None)
        return [text] if text is not None else []

    def finish(self) -> dict[str, Any]:
        """The closing ``done: true`` object with Ollama's counters."""
        return self._final("", None, self._take_tool_calls())

    @property
    def wall_clock(self) -> Clock:
        return self._wall_clock

    def note_first_token(self) -> None:
        """A text event was relayed without ``feed`` (the NDJSON fast path): time the first one."""
        if self._first_token_ns is None:
            self._first_token_ns = self._clock()

    @property
    def done_reason(self) -> str:
        # Ollama reports a tool-call turn as an ordinary stop.
        return "length" if self._finish_reason == "length" else "stop"

    # -- internals -------------------------------------------------------------------------------

    def _note_stats(self, obj: Mapping[str, Any]) -> None:
        timings = obj.get("timings")
        if isinstance(timings, Mapping):
            self._prompt_count = _count(timings.get("prompt_n"))
            self._eval_count = _count(timings.get("predicted_n"))
            self._prompt_ns = _ms_to_ns(timings.get("prompt_ms"))
            self._eval_ns = _ms_to_ns(timings.get("predicted_ms"))
        usage = obj.get("usage")
        if isinstance(usage, Mapping):
            # Timings win: they count only freshly evaluated prompt tokens, as Ollama does, while
            # usage folds cache hits in.
            if self._prompt_count is None:
                self._prompt_count = _count(usage.get("prompt_tokens"))
            if self._eval_count is None:
                self._eval_count = _count(usage.get("completion_tokens"))

    def _note_native_stats(self, chunk: Mapping[str, Any]) -> None:
        self._note_stats(chunk)
        if self._prompt_count is None:
            self._prompt_count = _count(chunk.get("tokens_evaluated"))
        if self._eval_count is None:
            self._eval_count = _count(chunk.get("tokens_predicted"))
        if chunk.get("stop"):
            self._finish_reason = "length" if chunk.get("stop_type") == "limit" else "stop"

    def _note_call_fragments(self, fragments: Any) -> None:
        if self.generate or not isinstance(fragments, list):
            return
        for position, fragment in enumerate(fragments):
            if not isinstance(fragment, Mapping):
                continue
            index = fragment.get("index", position)
            call = self._calls.setdefault(index if isinstance(index, int) else position, _PendingCall())
            function = fragment.get("function") or {}
            if function.get("name"):
                call.name += function["name"]
            arguments = function.get("arguments")
            if isinstance(arguments, str):
                call.arguments += arguments
            elif isinstance(arguments, Mapping):
                call.arguments = json.dumps(arguments)

    def _note_full_calls(self, calls: Any) -> None:
        if self.generate or not isinstance(calls, list):
            return
        for position, call in enumerate(calls):
            function = (call or {}).get("function") or {}
            arguments = function.get("arguments")
            self._calls[position] = _PendingCall(
                name=str(function.get("name") or ""),
                arguments=arguments if isinstance(arguments, str) else json.dumps(arguments or {}),
            )

    def _take_tool_calls(self) -> list[dict[str, Any]]:
        calls = [
            {"function": {"name": call.name, "arguments": _parse_arguments(call.arguments)}}
            for _, call in sorted(self._calls.items())
            if call.name
        ]
        self._calls.clear()
        return calls

    def _text_object(self, content: Any, thinking: Any) -> dict[str, Any] | None:
        content = content if isinstance(content, str) else ""
        thinking = thinking if isinstance(thinking, str) and thinking else None
        if not content and thinking is None:
            return None
        if self._first_token_ns is None:
            self._first_token_ns = self._clock()
        return self._object(content, thinking, [], done=False)

    def _object(
        self, content: str, thinking: str | None, calls: list[dict[str, Any]], *, done: bool
    ) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "model": self.model,
            "created_at": format_rfc3339_ns(self._wall_clock()),
        }
        if self.generate:
            obj["response"] = content
            if thinking:
                obj["thinking"] = thinking
        else:
            message: dict[str, Any] = {"role": "assistant", "content": content}
            if thinking:
                message["thinking"] = thinking
            if calls:
                message["tool_calls"] = calls
            obj["message"] = message
        obj["done"] = done
        return obj

    def _final(self, content: str, thinking: str | None, calls: list[dict[str, Any]]) -> dict[str, Any]:
        now = self._clock()
        obj = self._object(content, thinking, calls, done=True)
        obj["done_reason"] = self.done_reason
        if self.generate:
            # Ollama's context is its own runner's token ids; llama-server keeps the prompt cache
            # itself, so there is nothing useful to hand back for replay.
            obj["context"] = []
        obj.update(self._counters(now))
        return obj

    def _counters(self, now: int) -> dict[str, int]:
        total = max(0, now - self.started_ns)
        prompt_ns, eval_ns = self._prompt_ns, self._eval_ns
        if prompt_ns is None or eval_ns is None:
            # Without server timings, measure here instead: prompt work ends at the first token, so
            # clients computing tokens per second still get a plausible figure from a stream.
            after_load = self.started_ns + self.load_duration_ns
            first = self._first_token_ns if self._first_token_ns is not None else now
            if prompt_ns is None:
                prompt_ns = max(0, first - after_load)
            if eval_ns is None:
                eval_ns = max(0, now - first)
        return {
            "total_duration": total,
            "load_duration": self.load_duration_ns,
            "prompt_eval_count": self._prompt_count or 0,
            "prompt_eval_duration": prompt_ns,
            "eval_count": self._eval_count or 0,
            "eval_duration": eval_ns,
        }


def ollama_load_reply(model: str, reason: str, *, generate: bool) -> dict[str, Any]:
    """Ollama's answer to an empty chat or generate (load or unload the model): ``done_reason``."""
    obj: dict[str, Any] = {"model": model, "created_at": format_rfc3339_ns(time.time_ns())}
    if generate:
        obj["response"] = ""
    else:
        obj["message"] = {"role": "assistant", "content": ""}
    obj["done_reason"] = reason
    obj["done"] = True
    return obj


def openai_chat_response_to_ollama(
    resp: Mapping[str, Any],
    model: str,
    *,
    generate: bool = False,
    load_duration_ns: int = 0,
    started_ns: int,
    clock: Clock = time.monotonic_ns,
    wall_clock: Clock = time.time_ns,
) -> dict[str, Any]:
    """A non-streamed ``/v1/chat/completions`` reply as one Ollama chat (or generate) object."""
    if "error" in resp:
        return {"error": _error_text(resp["error"])}
    state = OllamaChatStream(
        model,
        generate=generate,
        load_duration_ns=load_duration_ns,
        started_ns=started_ns,
        clock=clock,
        wall_clock=wall_clock,
    )
    state._note_stats(resp)
    choices = resp.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], Mapping) else {}
    message = choice.get("message") or {}
    state._finish_reason = choice.get("finish_reason")
    state._note_full_calls(message.get("tool_calls"))
    content = message.get("content")
    thinking = message.get("reasoning_content")
    return state._final(
        content if isinstance(content, str) else "",
        thinking if isinstance(thinking, str) and thinking else None,
        state._take_tool_calls(),
    )


def native_completion_to_ollama(
    resp: Mapping[str, Any],
    model: str,
    *,
    generate: bool = True,
    load_duration_ns: int = 0,
    started_ns: int,
    clock: Clock = time.monotonic_ns,
    wall_clock: Clock = time.time_ns,
) -> dict[str, Any]:
    """A non-streamed native ``/completion`` or ``/infill`` reply as one Ollama object."""
    if "error" in resp:
        return {"error": _error_text(resp["error"])}
    state = OllamaChatStream(
        model,
        generate=generate,
        load_duration_ns=load_duration_ns,
        started_ns=started_ns,
        clock=clock,
        wall_clock=wall_clock,
    )
    state._note_native_stats({**resp, "stop": True})
    content = resp.get("content")
    return state._final(content if isinstance(content, str) else "", None, [])


# -- embedding replies ----------------------------------------------------------------------------


def _vectors(resp: Mapping[str, Any]) -> list[list[float]]:
    data = [item for item in resp.get("data") or [] if isinstance(item, Mapping)]
    data.sort(key=lambda item: item.get("index", 0))
    return [list(item.get("embedding") or []) for item in data]


def _shorten(vector: list[float], dimensions: int) -> list[float]:
    # Truncated vectors are renormalised so cosine and dot-product scores stay comparable.
    cut = vector[:dimensions]
    norm = math.sqrt(sum(value * value for value in cut))
    return [value / norm for value in cut] if norm else cut


def openai_embeddings_to_ollama_embed(
    resp: Mapping[str, Any],
    model: str,
    *,
    dimensions: int | None = None,
    load_duration_ns: int = 0,
    started_ns: int,
    clock: Clock = time.monotonic_ns,
) -> dict[str, Any]:
    """A ``/v1/embeddings`` reply as an Ollama ``/api/embed`` reply."""
    vectors = _vectors(resp)
    if dimensions:
        vectors = [_shorten(vector, dimensions) for vector in vectors]
    usage = resp.get("usage") or {}
    return {
        "model": model,
        "embeddings": vectors,
        "total_duration": max(0, clock() - started_ns),
        "load_duration": max(0, int(load_duration_ns)),
        "prompt_eval_count": int(usage.get("prompt_tokens") or 0),
    }


def openai_embeddings_to_ollama_embeddings(resp: Mapping[str, Any]) -> dict[str, Any]:
    """A ``/v1/embeddings`` reply as a legacy Ollama ``/api/embeddings`` reply."""
    vectors = _vectors(resp)
    return {"embedding": vectors[0] if vectors else []}
