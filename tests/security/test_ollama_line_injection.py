"""A server's text event is copied into the Ollama line only as one JSON string: a peer (which may
be anyone's server) cannot add keys to the line, forge its end, or break it, by any encoding of its
text."""

from __future__ import annotations

import json

import pytest

from llamaman.proxy.ndjson_stream import NdjsonTranslator
from tests.proxy.test_relay_ndjson import _state, _undated


@pytest.mark.parametrize(
    "content",
    [
        b'x","injected":1,"y":"z',  # closes the string early to add keys to the message
        b'x"},"done":true,"eval_count":999,"z":{"a":"',  # or to forge the end of the stream
        b"trailing backslash \\",  # escapes the closing quote: the line would run on
        b"raw \x01 control",
        b"bad utf-8 \xff\xfe",
    ],
)
def test_a_servers_text_event_cannot_reshape_the_ollama_line(content: bytes) -> None:
    """What a server (a peer may be anyone's) writes as text goes into the line only as one JSON
    string: an event that is not exactly that takes the parsing path, which gives what the full
    translation gives or drops an event it cannot read."""
    event = (
        b'data: {"choices":[{"finish_reason":null,"index":0,"delta":{"content":"' + content + b'"}}],'
        b'"created":1,"id":"a","model":"m","system_fingerprint":"f","object":"chat.completion.chunk"}\n\n'
    )
    lines = NdjsonTranslator(_state(False)).feed(event)
    for line in lines:
        obj = json.loads(line)  # every line is one valid JSON object
        assert set(obj) == {"model", "created_at", "message", "done"} and obj["done"] is False
        assert set(obj["message"]) == {"role", "content"}
    try:
        parsed = json.loads(event[6:])
    except ValueError:
        assert lines == []  # unreadable: dropped, as the parsing path does
        return
    want = [_undated(o) for o in _state(False).feed(parsed)]
    assert [_undated(json.loads(line)) for line in lines] == want
