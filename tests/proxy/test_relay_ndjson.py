"""The SSE-to-NDJSON relay of Ollama streams: its byte templates give exactly the objects the full
translation gives, however llama-server's bytes are cut into blocks."""

from __future__ import annotations

import json
from typing import Any

import pytest

from llamaman.proxy.ndjson_stream import NdjsonTranslator
from llamaman.proxy.translate_stream import OllamaChatStream, format_rfc3339_ns


class Ticks:
    def __init__(self, start: int) -> None:
        self.now = start

    def __call__(self) -> int:
        self.now += 1_234_567
        return self.now


def _state(generate: bool, wall_clock: Ticks | None = None) -> OllamaChatStream:
    wall = wall_clock or Ticks(1_700_000_000 * 10**9)
    return OllamaChatStream("tiny", generate=generate, started_ns=0, clock=Ticks(10**9), wall_clock=wall)


def _event(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def _text(content: str, **delta: Any) -> dict[str, Any]:
    return {
        "choices": [{"finish_reason": None, "index": 0, "delta": {"content": content, **delta}}],
        "created": 1,
        "id": "chatcmpl-x",
        "model": "tiny",
        "object": "chat.completion.chunk",
    }


def _served(content: str) -> dict[str, Any]:
    """A text event exactly as llama-server writes it (its keys, in its order)."""
    return {
        "choices": [{"finish_reason": None, "index": 0, "delta": {"content": content}}],
        "created": 1796030033,
        "id": "chatcmpl-R339L2YAcRuFUL9IeuotMrr7jE0wQ9AJ",
        "model": "/models/tiny.gguf",
        "system_fingerprint": "b11434-1a2b3c4d",
        "object": "chat.completion.chunk",
    }


FINAL = {
    "choices": [{"finish_reason": "stop", "index": 0, "delta": {}}],
    "usage": {"completion_tokens": 4, "prompt_tokens": 7, "total_tokens": 11},
    "timings": {"prompt_n": 7, "prompt_ms": 1.5, "predicted_n": 4, "predicted_ms": 3.25},
}
EVENTS = [
    {"choices": [{"finish_reason": None, "index": 0, "delta": {"role": "assistant", "content": None}}]},
    _text("ab"),
    _text('quote " back\\slash\n\ttab \x01 é 漢 🦙'),
    _text("", reasoning_content="hmm"),
    _text("cd", role="assistant"),
    _text("x", reasoning_content="both"),
    _served("ef"),
    _served('quote " back\\slash\n\ttab \x01 é 漢 🦙'),
    _served('"}}],"created":1,"a":"b'),  # the end marker inside the text itself
    _served(" "),
    {**_served("usage after"), "usage": {"completion_tokens": 2}},
    FINAL,
]


def _reference(generate: bool) -> list[dict[str, Any]]:
    state = _state(generate)
    out = [obj for event in EVENTS for obj in state.feed(event)]
    return [*out, state.finish()]


def _relayed(generate: bool, cut: int) -> tuple[list[dict[str, Any]], NdjsonTranslator]:
    state = _state(generate)
    ndjson = NdjsonTranslator(state)
    stream = b"".join(_event(e) for e in EVENTS) + b"data: [DONE]\n\n"
    lines: list[bytes] = []
    for i in range(0, len(stream), cut):
        lines += ndjson.feed(stream[i : i + cut])
    lines += ndjson.close()
    body = b"".join(lines)
    assert body.endswith(b"\n") and all(line for line in body.split(b"\n")[:-1])
    return [json.loads(line) for line in body.split(b"\n")[:-1]], ndjson


@pytest.mark.parametrize("generate", [False, True], ids=["chat", "generate"])
@pytest.mark.parametrize("cut", [1, 7, 100, 10_000])
def test_templated_lines_equal_the_full_translation_for_any_block_cut(generate: bool, cut: int) -> None:
    got, ndjson = _relayed(generate, cut)
    want = _reference(generate)
    # Lines of one block share one created_at (they arrived together); everything else is equal.
    assert [_undated(o) for o in got] == [_undated(o) for o in want]
    stamps = [o["created_at"] for o in got]
    assert stamps == sorted(stamps) and all(s.endswith("Z") and len(s) == 30 for s in stamps)
    assert got[-1]["done"] is True and got[-1]["eval_count"] == 4 and got[-1]["prompt_eval_count"] == 7
    assert ndjson.accounting == [EVENTS[-2], FINAL]


def _undated(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k != "created_at"}


def test_llama_servers_text_events_keep_their_text_exactly() -> None:
    ndjson = NdjsonTranslator(_state(False))
    plain = ["ef", "é 漢 🦙", " ", "a}}],b"]  # copied as they are
    escaped = ['quote "', "back\\slash", "new\nline", '"}}],"created":1,"a":"b']  # parsed
    texts = plain + escaped
    block = b"".join(
        b"data: " + json.dumps(_served(t), ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"
        for t in texts
    )
    lines = [json.loads(line) for line in ndjson.feed(block)]
    assert [line["message"]["content"] for line in lines] == texts
    assert len({line["created_at"] for line in lines[: len(plain)]}) == 1  # one block, one stamp


def test_created_at_is_the_rfc3339_nanosecond_stamp_of_the_wall_clock() -> None:

    clock = Ticks(1_700_000_000 * 10**9 + 998_000_000)
    ndjson = NdjsonTranslator(_state(False, clock))
    stamps = []
    for _ in range(3):  # crosses a second boundary: the cached date part must follow
        [line] = ndjson.feed(_event(_text("a")))
        stamps.append(json.loads(line)["created_at"])
    assert stamps == [
        format_rfc3339_ns(1_700_000_000 * 10**9 + 998_000_000 + k * 1_234_567) for k in (1, 2, 3)
    ]
    assert stamps[0][:19] != stamps[-1][:19]


def test_an_error_event_ends_the_stream_with_the_error_and_nothing_after() -> None:
    ndjson = NdjsonTranslator(_state(False))
    lines = ndjson.feed(_event(_text("a")) + _event({"error": {"message": "boom"}}) + _event(_text("b")))
    assert [json.loads(line).get("error") for line in lines] == [None, "boom"]
    assert ndjson.finished and ndjson.error == "boom"
    assert ndjson.close() == []


def test_a_stream_cut_short_still_gets_its_closing_object() -> None:
    ndjson = NdjsonTranslator(_state(False))
    assert len(ndjson.feed(_event(_text("a")) + b'data: {"cho')) == 1
    [closing] = ndjson.close()
    assert json.loads(closing)["done"] is True


def test_native_completion_events_go_through_the_native_translation() -> None:
    state = _state(True)
    ndjson = NdjsonTranslator(state, native=True)
    block = _event({"content": "ab", "stop": False}) + _event(
        {"content": "", "stop": True, "stop_type": "limit", "tokens_predicted": 2, "tokens_evaluated": 3}
    )
    lines = [json.loads(line) for line in ndjson.feed(block) + ndjson.close()]
    assert [line.get("response") for line in lines] == ["ab", ""]
    assert lines[-1]["done_reason"] == "length" and lines[-1]["eval_count"] == 2
