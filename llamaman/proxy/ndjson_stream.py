"""llama-server's SSE stream as Ollama NDJSON, with the least work per token.

The common event (one choice whose delta carries only text) becomes its Ollama line by a byte
template around the JSON-escaped text: one orjson parse in, one string escape out. Anything else
(thinking, tool calls, the final event with finish reason and timings, errors) goes through
``OllamaChatStream``, which owns Ollama's semantics; the template only ever produces what it would.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

from orjson import dumps as _dumps
from orjson import loads as _loads

from llamaman.core.exchange import Exchange
from llamaman.proxy.translate_stream import OllamaChatStream
from llamaman.upstream.answers import stream_error_line
from llamaman.upstream.inflight import CLIENT_LEFT
from llamaman.upstream.relay import Relay
from llamaman.upstream.target import UpstreamTarget
from llamaman.upstream.wire import UpstreamError, UpstreamResponse

log = logging.getLogger(__name__)


def _line(obj: dict[str, Any]) -> bytes:
    return _dumps(obj) + b"\n"


class NdjsonTranslator:
    """Feed raw SSE blocks as they arrive; get finished NDJSON lines back.

    ``finished`` says whether the stream has ended (``[DONE]`` or an error object, whose text is in
    ``error``); ``accounting`` keeps the parsed events that carry usage or timings.
    """

    def __init__(self, state: OllamaChatStream, *, native: bool = False) -> None:
        self.chat = state  # the full translation, for whatever the byte template does not cover
        self._wall_clock = state.wall_clock
        self.native = native
        self.finished = False
        self.error: str | None = None
        self.accounting: list[dict[str, Any]] = []
        self._buf = b""
        self._second = -1
        self._stamp_head = b""
        # The constant parts of a text line, so the common event costs one escape and a join.
        model = _dumps(state.model)
        key = b'"response":' if state.generate else b'"message":{"role":"assistant","content":'
        self._head = b'{"model":' + model + b',"created_at":"'
        self._mid = b'",' + key
        self._tail = b',"done":false}\n' if state.generate else b'},"done":false}\n'

    def feed(self, block: bytes) -> list[bytes]:
        """The NDJSON lines the complete events in ``block`` (and any earlier remainder) give."""
        data = self._buf + block if self._buf else block
        cut = data.rfind(b"\n")
        if cut < 0:
            self._buf = data
            return []
        self._buf = data[cut + 1 :]
        out: list[bytes] = []
        stamp = b""  # one created_at for the lines of one block: they arrived together
        for line in data[:cut].split(b"\n"):
            if not line:
                continue  # the blank line after each event
            if self.finished:
                break
            literal = None if self.native else _text_literal(line)
            if literal is not None:
                # llama-server's own text event: its JSON string goes into the line as it is.
                self.chat.note_first_token()
                stamp = stamp or self._stamp()
                out.append(b"".join((self._head, stamp, self._mid, literal, self._tail)))
                continue
            stamp = b""  # a line stamped below is later: a text line after it takes a fresh stamp
            if line.startswith(b"data: {") and not self.native:
                # The common event, inline: no generator, one parse.
                payload = line[6:]
                obj = _parse(payload)
                if obj is None:
                    continue
                text = _plain_text(obj)
                if text is not None:
                    self.chat.note_first_token()
                    out.append(self._text_line(text))
                else:
                    out.extend(self._object(obj, payload))
                continue
            out.extend(self._event(line))
        return out

    def close(self) -> list[bytes]:
        """What is left once upstream ended: a last unterminated event and the closing object."""
        out = [] if self.finished or not self._buf else list(self._event(self._buf))
        self._buf = b""
        if not self.finished:
            self.finished = True
            out.append(_line(self.chat.finish()))
        return out

    # ---- one event -----------------------------------------------------------------------------
    def _event(self, line: bytes) -> Iterator[bytes]:
        if line.startswith(b"data:"):
            line = line[5:].strip()
            if line == b"[DONE]":
                self.finished = True
                yield _line(self.chat.finish())
                return
        elif not line.startswith(b"{"):
            return  # blank separators, comments, event names
        obj = _parse(line)
        if obj is not None:
            yield from self._object(obj, line)

    def _object(self, obj: dict[str, Any], line: bytes) -> Iterator[bytes]:
        if b'"usage"' in line or b'"timings"' in line:
            self.accounting.append(obj)
        text = None if self.native else _plain_text(obj)
        if text is not None:
            self.chat.note_first_token()
            yield self._text_line(text)
            return
        feed = self.chat.feed_native if self.native else self.chat.feed
        for piece in feed(obj):
            if "error" in piece:
                self.error = str(piece["error"])
                self.finished = True
                yield _line(piece)
                return
            yield _line(piece)

    def _text_line(self, text: str) -> bytes:
        return b"".join((self._head, self._stamp(), self._mid, _dumps(text), self._tail))

    def _stamp(self) -> bytes:
        """``created_at`` as ``format_rfc3339_ns`` writes it; the date part is formatted once a second."""
        ns = self._wall_clock()
        secs, frac = divmod(ns, 1_000_000_000)
        if secs != self._second:
            self._second = secs
            self._stamp_head = datetime.fromtimestamp(secs, UTC).strftime("%Y-%m-%dT%H:%M:%S.").encode()
        return self._stamp_head + b"%09dZ" % frac


_TEXT_HEAD = b'data: {"choices":[{"finish_reason":null,"index":0,"delta":{"content":"'
_TEXT_END = b'"}}],"created":'
_TEXT_TYPE = b',"object":"chat.completion.chunk"}'
_NOT_PLAIN = re.compile(rb'[\x00-\x1f"\\]')


def _text_literal(line: bytes) -> bytes | None:
    """The content's JSON string when ``line`` is llama-server's event for one piece of text and
    nothing else (exactly what ``_plain_text`` takes), found without parsing; None for any other
    line, which then takes the parsing path.

    The string's closing quote is the first ``"}}],"created":``, since a quote inside a JSON string
    is escaped. After it the event may hold only its id, model, fingerprint and type: four more keys,
    the last one ``object``. Any other key (usage, timings, an error) adds a ``":`` and the count
    differs, as it does for a name that holds one (those take the parsing path too)."""
    if not line.startswith(_TEXT_HEAD):
        return None
    start = len(_TEXT_HEAD) - 1
    end = line.find(_TEXT_END, start + 2)  # at least one character of text
    if end < 0 or not line.endswith(_TEXT_TYPE) or line.count(b'":', end + len(_TEXT_END)) != 4:
        return None
    # Copied into the answer as it is, so it must be one well-formed JSON string whatever the
    # server sent (a peer may be anyone's): no quote, backslash or control byte inside (escaped
    # text takes the parsing path), and UTF-8.
    if _NOT_PLAIN.search(line, start + 1, end) is not None:
        return None
    try:
        line[start + 1 : end].decode()
    except UnicodeDecodeError:
        return None
    return line[start : end + 1]


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        obj = _loads(line)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def _plain_text(obj: dict[str, Any]) -> str | None:
    """The delta's text when the event is nothing but text for choice 0 (the template's case)."""
    if "error" in obj or "timings" in obj or "usage" in obj:
        return None
    choices = obj.get("choices")
    if not isinstance(choices, list) or len(choices) != 1:
        return None
    choice = choices[0]
    if not isinstance(choice, dict) or choice.get("finish_reason") is not None or choice.get("index", 0):
        return None
    delta = choice.get("delta")
    if not isinstance(delta, dict):
        return None
    content = delta.get("content")
    if not isinstance(content, str) or not content:
        return None
    for key in delta:
        if key not in ("content", "role"):
            return None
    return content


async def relay_ndjson(
    relay: Relay, lease: UpstreamTarget, upstream: UpstreamResponse, ndjson: NdjsonTranslator, ex: Exchange
) -> AsyncIterator[bytes]:
    """The body of a streamed Ollama answer: each upstream block's lines in one write, the exchange
    recorded (usage from the final event) and the lease released however the stream ends."""
    try:
        async for block in upstream.aiter_raw(paced=True):
            ex.progress_tokens += block.count(b"data: ")
            lines = ndjson.feed(block)
            if lines:
                if ex.first_byte is None:
                    ex.first_byte = time.monotonic()
                yield lines[0] if len(lines) == 1 else b"".join(lines)
        if ex.cancelled is not None and ex.cancelled != CLIENT_LEFT:
            ex.error = ex.cancelled  # an administrator cancelled it: say so in the stream
            yield stream_error_line("ollama", ex.cancelled)
        elif not upstream.aborted:
            yield b"".join(ndjson.close())
    except UpstreamError as exc:
        # A dead llama-server ends the stream with an error line the client can show, right away.
        reason = str(exc) or exc.__class__.__name__
        ex.error = f"upstream stream broke: {reason}"
        log.warning("stream from %s broke: %r", lease.model_name, exc)
        where = f"node '{lease.node}'" if lease.node else "llama-server"
        yield stream_error_line("ollama", f"{where} for '{lease.model_name}' stopped mid-stream: {reason}")
    finally:
        upstream.close()
        # Released even when the client went away mid-stream.
        lease.release()
        for obj in ndjson.accounting:
            ex.absorb_usage(obj)
        ex.error = ex.error or ndjson.error
        relay.record(ex)
