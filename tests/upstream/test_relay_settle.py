"""What is left once a whole answer is read (the connection back to the pool, the lease released, the
accounting) happens exactly once: at once on the full path, when the caller says so with
``settle_later`` (the proxy's fast lane, after it has written the answer), and on every failure."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import httpx
import pytest

from llamaman.core.exchange import Exchange
from llamaman.upstream.relay import Relay
from llamaman.upstream.responses import RawResponse

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
ANSWER = b'{"choices":[{"message":{"content":"ab"}}],"usage":{"prompt_tokens":3,"completion_tokens":2}}'


@dataclass
class Place:
    """A lease on a place at ``base_url``, counting its releases."""

    base_url: str
    released: int = 0
    prefix: str = ""
    auth_header: bytes | None = None
    connections: int | None = None
    extra_headers: tuple[tuple[bytes, bytes], ...] = ()
    node: str | None = None
    model_name: str = "m"
    load_duration_ns: int = 0
    notes: list[str] = field(default_factory=list)

    def release(self) -> None:
        self.released += 1

    async def fail_over(self, reason: str) -> bool:
        self.notes.append(reason)
        return False

    def content_for_place(self, content: bytes | None) -> bytes | None:
        return content


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[bytes | None], asyncio.Future[str]]]:
    """``serve(head_and_body)``: a server answering every request with those bytes (None: with a
    head promising more body than it sends, then silence). Yields its base URL's future."""
    servers: list[asyncio.Server] = []
    writers: list[asyncio.StreamWriter] = []

    def start(reply: bytes | None) -> asyncio.Future[str]:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writers.append(writer)
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                if reply is None:
                    writer.write(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 999\r\n\r\n{"
                    )
                    return
                writer.write(reply)

        async def begin() -> str:
            server = await asyncio.start_server(answer, "127.0.0.1", 0)
            servers.append(server)
            return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"

        return asyncio.ensure_future(begin())

    yield start
    for w in writers:
        w.close()
    for s in servers:
        s.close()


@pytest.fixture
async def relay() -> AsyncIterator[tuple[Relay, list[Exchange]]]:
    async with httpx.AsyncClient() as http:
        r = Relay(http, request_timeout=30)
        seen: list[Exchange] = []
        r.add_observer(seen.append)
        try:
            yield r, seen
        finally:
            await r.upstream.aclose()


def whole(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%b" % (
        len(body),
        body,
    )


async def settled(seen: list[Exchange]) -> Exchange:
    """The one exchange recorded, once the relay's deferred accounting has run."""
    for _ in range(10):
        if seen:
            break
        await asyncio.sleep(0)
    [ex] = seen
    return ex


async def test_an_answer_settled_later_holds_its_lease_until_the_caller_settles_it(
    serve: Callable[[bytes | None], asyncio.Future[str]], relay: tuple[Relay, list[Exchange]]
) -> None:
    r, seen = relay
    place = Place(await serve(whole(ANSWER)))
    ex = Exchange("m", "/v1/chat/completions")
    response = await r.forward(
        place, "POST", "/v1/chat/completions", content=b"{}", exchange=ex, settle_later=True
    )
    assert isinstance(response, RawResponse) and response.body == ANSWER
    assert place.released == 0 and len(r.inflight) == 1  # still the caller's, and listed as running
    assert response.settle is not None
    response.settle()
    assert place.released == 1
    done = await settled(seen)
    assert (done.status, done.prompt_tokens, done.completion_tokens) == (200, 3, 2)
    assert len(r.inflight) == 0
    # The connection went back to the pool: the next request reuses it.
    again = await r.forward(place, "POST", "/v1/chat/completions", content=b"{}")
    assert isinstance(again, RawResponse) and again.settle is None and place.released == 2


async def test_without_settle_later_the_answer_comes_settled(
    serve: Callable[[bytes | None], asyncio.Future[str]], relay: tuple[Relay, list[Exchange]]
) -> None:
    r, seen = relay
    place = Place(await serve(whole(ANSWER)))
    response = await r.forward(place, "POST", "/v1/chat/completions", content=b"{}")
    assert isinstance(response, RawResponse) and response.settle is None and place.released == 1
    assert (await settled(seen)).completion_tokens == 2


@pytest.mark.parametrize("later", [False, True])
async def test_a_request_cancelled_while_its_answer_is_read_releases_its_lease_and_stays_cancelled(
    serve: Callable[[bytes | None], asyncio.Future[str]], relay: tuple[Relay, list[Exchange]], later: bool
) -> None:
    r, seen = relay
    place = Place(await serve(None))  # the head arrives, the body never does
    ex = Exchange("m", "/v1/chat/completions")
    asking = asyncio.create_task(
        r.forward(place, "POST", "/v1/chat/completions", content=b"{}", exchange=ex, settle_later=later)
    )
    while ex.status == 0:  # set once the head is in, just before the body is read
        assert not asking.done()
        await asyncio.sleep(0.001)
    await asyncio.sleep(0)
    asking.cancel()
    with pytest.raises(asyncio.CancelledError):  # not another error raised while cleaning up
        await asking
    assert place.released == 1
    await settled(seen)
    assert len(r.inflight) == 0
