"""A response's head leaves with the first body bytes after it, in one write to the socket."""

from __future__ import annotations

import asyncio
from typing import Any

from llamaman.gateway.http_protocol import CoalescingTransport


class RecordingTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed, "written after close"
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1234) if name == "peername" else default


HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


async def test_a_plain_answer_goes_out_in_one_write() -> None:
    raw = RecordingTransport()
    t = CoalescingTransport(raw, asyncio.get_running_loop())  # type: ignore[arg-type]
    t.write(HEAD)
    assert raw.writes == []  # held for the body
    t.write(b"ok")
    assert raw.writes == [HEAD + b"ok"]  # at once, not at the end of the turn
    await asyncio.sleep(0)
    assert raw.writes == [HEAD + b"ok"]  # nothing sent twice


async def test_a_head_without_a_body_leaves_at_the_end_of_the_loop_turn() -> None:
    raw = RecordingTransport()
    t = CoalescingTransport(raw, asyncio.get_running_loop())  # type: ignore[arg-type]
    t.write(b"HTTP/1.1 204 No Content\r\n\r\n")
    await asyncio.sleep(0)
    assert raw.writes == [b"HTTP/1.1 204 No Content\r\n\r\n"]


async def test_stream_chunks_after_the_head_are_not_held() -> None:
    raw = RecordingTransport()
    t = CoalescingTransport(raw, asyncio.get_running_loop())  # type: ignore[arg-type]
    t.write(HEAD)
    t.write(b"5\r\nhello\r\n")
    t.write(b"5\r\nworld\r\n")
    assert raw.writes == [HEAD + b"5\r\nhello\r\n", b"5\r\nworld\r\n"]


async def test_closing_sends_a_held_head_first_and_a_gone_client_gets_nothing() -> None:
    raw = RecordingTransport()
    t = CoalescingTransport(raw, asyncio.get_running_loop())  # type: ignore[arg-type]
    t.write(b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\n\r\n")
    t.close()
    assert raw.writes == [b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\n\r\n"] and raw.closed

    gone = RecordingTransport()
    t = CoalescingTransport(gone, asyncio.get_running_loop())  # type: ignore[arg-type]
    t.write(HEAD)
    gone.closed = True  # the client hung up before the loop's turn ended
    await asyncio.sleep(0)
    assert gone.writes == []


async def test_everything_else_is_the_wrapped_transports() -> None:
    raw = RecordingTransport()
    t = CoalescingTransport(raw, asyncio.get_running_loop())  # type: ignore[arg-type]
    assert t.get_extra_info("peername") == ("127.0.0.1", 1234)
    t.write(HEAD)
    assert t.get_write_buffer_size() == len(HEAD)
    t.abort()
    await asyncio.sleep(0)
    assert raw.writes == [] and raw.closed


async def test_a_whole_answer_leaves_at_once_behind_anything_held() -> None:
    raw = RecordingTransport()
    t = CoalescingTransport(raw, asyncio.get_running_loop())  # type: ignore[arg-type]
    t.write_whole(HEAD + b"ok")
    assert raw.writes == [HEAD + b"ok"]  # not held for the end of the turn
    t.write(b"HTTP/1.1 204 No Content\r\n\r\n")
    t.write_whole(HEAD + b"ok")
    assert raw.writes == [HEAD + b"ok", b"HTTP/1.1 204 No Content\r\n\r\n" + HEAD + b"ok"]
    await asyncio.sleep(0)
    assert len(raw.writes) == 2  # nothing sent twice
