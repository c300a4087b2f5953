"""The fast lane on a listening proxy port, beside a port without it, in front of one real llama-server:
what the lane answers must be what the full path answers, recorded alike, and whatever it leaves must
reach the full path whole and in order."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from llamaman.app import LlamaMan
from llamaman.core.exchange import Exchange
from llamaman.testing.tiny_gguf import expected_text
from llamaman.upstream.wire import UpstreamResponse
from tests.proxy.lane_ports import Answers, Ports, client, request, text_of, whereabouts

pytestmark = pytest.mark.llama

HI = [{"role": "user", "content": "hi"}]
COUNTS = ("prompt_tokens", "completion_tokens")


# A slot for a hung-up generation to run out in, beside the next request's (see the test that uses it).
SLOTS_APART = {"ctx_size": 4096, "parallel": 4}


def chat(n: int, **more: Any) -> dict[str, Any]:
    return {"model": "tiny-a", "messages": HI, "max_tokens": n, **more}


async def key_headers(services: LlamaMan, name: str) -> dict[str, str]:
    _, key = await services.auth.keys.create(name)
    return {"Authorization": f"Bearer {key}"}


def spent_today(services: LlamaMan, name: str) -> int:
    record = next(k for k in services.auth.keys.by_id.values() if k.name == name)
    return services.auth.keys.tokens_today(record.id)


async def streamed(c: httpx.AsyncClient, body: dict[str, Any]) -> tuple[str, dict[str, Any], httpx.Headers]:
    text, usage = "", None
    async with c.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if line.startswith("data: {"):
                event = json.loads(line[6:])
                usage = event.get("usage") or usage
                for choice in event.get("choices") or []:
                    text += (choice.get("delta") or {}).get("content") or ""
        headers = r.headers
    assert usage is not None
    return text, usage, headers


async def test_the_lane_answers_a_plain_request_as_the_full_path_does_and_it_is_counted_alike(
    services: LlamaMan, proxy_pair: Ports, api: httpx.AsyncClient
) -> None:
    await services.router.load("tiny-a")
    told: dict[str, list[Any]] = {"lane": [], "full": []}
    for name, server in (("lane", proxy_pair.lane), ("full", proxy_pair.full)):
        h = await key_headers(services, name)
        async with client(server.url, h) as c:
            r = await c.post("/v1/chat/completions", json=chat(5))
            assert r.status_code == 200, r.text
            reply = r.json()
            assert reply["choices"][0]["message"]["content"] == expected_text("A", 5)
            asked = chat(7, stream=True, stream_options={"include_usage": True})
            text, usage, stream_headers = await streamed(c, asked)
            assert text == expected_text("A", 7) and usage["completion_tokens"] == 7
            heads = [sorted(k for k in h if k != "date") for h in (r.headers, stream_headers)]
            # (The second run of a prompt finds it in llama-server's cache: only that differs.)
            counts = [{k: u[k] for k in COUNTS} for u in (reply["usage"], usage)]
            told[name] = [*counts, heads]
    assert proxy_pair.taken == 2  # both answers on the lane's port came the lane's way
    assert told["lane"] == told["full"]  # the same counts, the same headers

    await services.telemetry.activity.flush()
    rows = (await api.get("/api/activity")).json()["items"]
    logged = {
        (r["key_name"], r["endpoint"], r["status"], r["prompt_tokens"], r["completion_tokens"]) for r in rows
    }
    for name in ("lane", "full"):
        for usage in told[name][:2]:
            counted = (usage["prompt_tokens"], usage["completion_tokens"])
            assert (name, "/v1/chat/completions", 200, *counted) in logged
    for name in ("lane", "full"):
        spent = sum(u["prompt_tokens"] + u["completion_tokens"] for u in told[name][:2])
        assert spent_today(services, name) == spent


async def test_what_the_lane_leaves_is_answered_by_the_full_path_exactly_as_on_a_port_without_it(
    services: LlamaMan, proxy_pair: Ports
) -> None:
    await services.router.load("tiny-a")
    h = await key_headers(services, "plain")
    as_json = {"content-type": "application/json"}
    cases: list[tuple[str, dict[str, Any]]] = [
        ("a query", {"url": "/v1/chat/completions?autoload=true", "json": chat(2)}),
        ("text", {"content": json.dumps(chat(2)), "headers": {"content-type": "text/plain"}}),
        ("not JSON", {"content": b'{"model": "tiny-a",', "headers": as_json}),
        ("two models", {"content": b'{"model":"tiny-a","model":"tiny-b"}', "headers": as_json}),
        ("an unknown model", {"json": {**chat(2), "model": "nothing-here"}}),
        ("no key", {"json": chat(2), "headers": {"authorization": ""}}),
        ("a wrong key", {"json": chat(2), "headers": {"authorization": "Bearer wrong"}}),
        ("a chunked body", {"content": _chunks(json.dumps(chat(4)).encode()), "headers": as_json}),
    ]
    for why, asked in cases:
        answers = []
        for server in (proxy_pair.lane, proxy_pair.full):
            async with client(server.url, h) as c:
                kw = dict(asked)
                if isinstance(kw.get("content"), _chunks):
                    kw["content"] = _chunks(kw["content"].data)  # a fresh stream for each port
                r = await c.post(kw.pop("url", "/v1/chat/completions"), **kw)
                body = r.json()
                answers.append((r.status_code, body.get("error") or body["choices"][0]["message"]["content"]))
        assert answers[0] == answers[1], why
    assert proxy_pair.taken == 0  # not one of them went the lane's way


class _chunks:
    """A request body sent with chunked framing (an async iterator, as httpx does)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._parts()

    async def _parts(self) -> AsyncIterator[bytes]:
        yield self.data[:10]
        yield self.data[10:]


async def test_requests_sent_in_one_go_are_answered_in_order_whichever_way_each_goes(
    services: LlamaMan, proxy_pair: Ports
) -> None:
    await services.router.load("tiny-a")
    _, key = await services.auth.keys.create("pipelining")
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy_pair.lane.port)
    try:
        answers = Answers()
        # Four requests in one write: the first goes the lane's way, the others wait behind it in
        # uvicorn's queue (the third would go the full way anyway, for its query).
        writer.write(
            request(key, chat(3)) + request(key, chat(5)) + request(key, chat(2), "/v1/chat/completions?x=1")
            + request(key, chat(4))
        )  # fmt: skip
        got = await answers.read(reader, 4)
        assert [text_of(a) for a in got] == [expected_text("A", n) for n in (3, 5, 2, 4)]
        assert proxy_pair.taken == 1
        # The connection is kept: the next request, alone, goes the lane's way again.
        writer.write(request(key, chat(6)))
        assert text_of((await answers.read(reader, 1))[0]) == expected_text("A", 6)
        assert proxy_pair.taken == 2
        # A request the lane admits by its headers, but whose model the full path must load, is
        # handed over with its body: the full path answers it.
        writer.write(request(key, {**chat(2), "model": "tiny-b"}))
        assert text_of((await answers.read(reader, 1))[0]) == expected_text("B", 2)
        assert proxy_pair.taken == 2
    finally:
        writer.close()


async def test_a_request_asking_to_close_its_connection_is_answered_on_the_lane_and_the_connection_closed(
    services: LlamaMan, proxy_pair: Ports
) -> None:
    """A client that opens a connection per request (a burst of them) sends ``Connection: close``:
    answered on the lane, plain or streamed, told the connection closes, and nothing pipelined
    behind it answered, as on the full path."""
    await services.router.load("tiny-a")
    _, key = await services.auth.keys.create("closing")
    close = "Connection: close\r\n"
    for n, body in ((3, chat(3)), (4, chat(4, stream=True))):
        asked = request(key, body, extra=close) + request(key, chat(5))
        heads, texts = [], []
        for port in (proxy_pair.lane.port, proxy_pair.full.port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(asked)
            raw = await asyncio.wait_for(reader.read(-1), 60)  # up to the server's close
            writer.close()
            head, _, rest = raw.partition(b"\r\n\r\n")
            lines = head.lower().split(b"\r\n")[1:]  # names only: lengths and dates differ from run to run
            heads.append(sorted(h if h.startswith(b"connection:") else h.partition(b":")[0] for h in lines))
            texts.append(rest if body.get("stream") else [text_of(a) for a in _answers(raw)])
        assert b"connection: close" in heads[0] and heads[0] == heads[1]
        if body.get("stream"):
            assert all(t.count(b"data: [DONE]") == 1 and t.endswith(b"0\r\n\r\n") for t in texts)
        else:
            assert texts == [[expected_text("A", n)]] * 2
    assert proxy_pair.taken == 2


def _answers(raw: bytes) -> list[tuple[int, bytes]]:
    answers = Answers()
    answers.parser.feed_data(raw)
    return answers.done


async def test_http_1_0_and_expect_continue_are_the_full_paths_and_answered(
    services: LlamaMan, proxy_pair: Ports
) -> None:
    await services.router.load("tiny-a")
    _, key = await services.auth.keys.create("old-clients")
    old = request(key, chat(3)).replace(b"HTTP/1.1", b"HTTP/1.0", 1)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy_pair.lane.port)
    writer.write(old)
    assert text_of((await Answers().read(reader, 1))[0]) == expected_text("A", 3)
    writer.close()
    # The 100 is LlamaMan's to send; passed on to llama-server, Expect had it answer "100 Continue" as
    # the final answer, now and then: a few tries.
    for n in (4, 5, 6):
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy_pair.lane.port)
        raw = request(key, chat(n), extra="Expect: 100-continue\r\n")
        head, _, body = raw.partition(b"\r\n\r\n")
        writer.write(head + b"\r\n\r\n")
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)).startswith(b"HTTP/1.1 100")
        writer.write(body)
        assert text_of((await Answers().read(reader, 1))[0]) == expected_text("A", n)
        writer.close()
    assert proxy_pair.taken == 0


async def test_a_port_stopping_lets_the_answer_on_the_lane_finish(
    services: LlamaMan, proxy_pair: Ports
) -> None:
    m = await services.router.load("tiny-a")
    h = await key_headers(services, "stopping")
    async with client(proxy_pair.lane.url, h) as c:
        asking = asyncio.create_task(c.post("/v1/chat/completions", json=chat(400)))
        while not len(services.relay.inflight):
            await asyncio.sleep(0.005)
        # A grace no machine's slowness runs out (its end is the next test's): the answer finishes.
        proxy_pair.lane.server.config.timeout_graceful_shutdown = 60
        await proxy_pair.lane.stop()
        try:
            r = await asking
        except httpx.ReadTimeout:
            raise AssertionError(
                f"no answer in the client's 60 s: {await whereabouts(services, m)}"
            ) from None
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == expected_text("A", 400)
    assert r.headers.get("connection") != "keep-alive"
    assert proxy_pair.taken == 1


async def test_a_client_that_leaves_before_its_body_is_done_takes_no_place(
    services: LlamaMan, proxy_pair: Ports
) -> None:
    m = await services.router.load("tiny-a")
    _, key = await services.auth.keys.create("leaving")
    raw = request(key, chat(3))
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy_pair.lane.port)
    writer.write(raw[:-5])
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    # The next request is served: nothing was held for the one that left.
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy_pair.lane.port)
    writer.write(raw)
    assert text_of((await Answers().read(reader, 1))[0]) == expected_text("A", 3)
    writer.close()
    assert proxy_pair.taken == 1
    assert services.router.slot(m).inflight == 0 and len(services.relay.inflight) == 0


# ---- a full place: the lane waits in the queue as the full path does --------------------------------
async def until(check: Callable[[], bool], what: str) -> None:
    for _ in range(2000):
        if check():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"{what}: not reached")


def queued(services: LlamaMan) -> list[dict[str, Any]]:
    return [r for r in services.relay.inflight.snapshot() if r["state"] == "queued"]


async def test_requests_queued_behind_a_full_place_wait_on_the_lane_and_are_answered_and_counted(
    services: LlamaMan, proxy_pair: Ports, api: httpx.AsyncClient
) -> None:
    await services.presets.put("tiny-a.gguf", {"max_concurrent": 1, "max_queue_depth": 8})
    m = await services.router.load("tiny-a")
    h = await key_headers(services, "burst")
    async with client(proxy_pair.lane.url, h) as c:
        answers = await asyncio.gather(
            *(c.post("/v1/chat/completions", json=chat(n)) for n in (3, 4, 5, 6, 7))
        )
    assert [r.json()["choices"][0]["message"]["content"] for r in answers] == [
        expected_text("A", n) for n in (3, 4, 5, 6, 7)
    ]
    assert proxy_pair.taken == 5  # the first had a place at once, the others waited for one on the lane
    assert proxy_pair.waited >= 1
    await services.telemetry.activity.flush()
    rows = (await api.get("/api/activity", params={"key_name": "burst"})).json()["items"]
    assert sorted(r["completion_tokens"] for r in rows) == [3, 4, 5, 6, 7]
    assert all(r["status"] == 200 for r in rows)
    assert services.router.slot(m).inflight == 0 and len(services.relay.inflight) == 0
    assert spent_today(services, "burst") == sum(r.json()["usage"]["total_tokens"] for r in answers)


async def test_a_full_queue_turns_the_request_away_on_the_lane_as_on_the_full_path(
    services: LlamaMan, proxy_pair: Ports, api: httpx.AsyncClient
) -> None:
    await services.presets.put("tiny-a.gguf", {"max_concurrent": 1, "max_queue_depth": 0})
    held = await services.router.acquire("tiny-a")  # the one place, taken; no room to queue
    told = []
    for name, server in (("lane-refused", proxy_pair.lane), ("full-refused", proxy_pair.full)):
        h = await key_headers(services, name)
        async with client(server.url, h) as c:
            r = await c.post("/v1/chat/completions", json=chat(2))
        told.append((r.status_code, r.json(), r.headers.get("retry-after")))
    held.release()
    assert told[0] == told[1] and told[0][0] == 429
    await services.telemetry.activity.flush()
    rows = {
        r["key_name"]: (r["status"], r["model"], r["error"], r["endpoint"])
        for r in (await api.get("/api/activity")).json()["items"]
    }
    assert rows["lane-refused"] == rows["full-refused"]
    assert rows["lane-refused"][:2] == (429, "tiny-a")
    assert proxy_pair.taken == 0 and proxy_pair.waited == 1


async def test_a_queued_request_an_administrator_cancels_is_answered_as_on_the_full_path(
    services: LlamaMan, proxy_pair: Ports
) -> None:
    await services.presets.put("tiny-a.gguf", {"max_concurrent": 1, "max_queue_depth": 4})
    held = await services.router.acquire("tiny-a")
    told = []
    for server in (proxy_pair.lane, proxy_pair.full):
        h = await key_headers(services, "cancelled")
        async with client(server.url, h) as c:
            asking = asyncio.create_task(c.post("/v1/chat/completions", json=chat(2)))
            await until(lambda: bool(queued(services)), "the request queued")
            services.relay.inflight.cancel(queued(services)[0]["id"])
            r = await asking
        told.append((r.status_code, r.json()))
    held.release()
    assert told[0] == told[1] and told[0][0] >= 400
    assert proxy_pair.taken == 0 and proxy_pair.waited == 1 and len(services.relay.inflight) == 0


async def test_a_client_that_leaves_while_queued_is_recorded_and_keeps_no_place(
    services: LlamaMan, proxy_pair: Ports
) -> None:
    await services.presets.put("tiny-a.gguf", {"max_concurrent": 1, "max_queue_depth": 4})
    held = await services.router.acquire("tiny-a")
    m = held.instance
    seen: list[Exchange] = []
    services.relay.add_observer(seen.append)
    _, key = await services.auth.keys.create("gone")
    _, writer = await asyncio.open_connection("127.0.0.1", proxy_pair.lane.port)
    writer.write(request(key, chat(300)))
    await until(lambda: bool(queued(services)), "the request queued")
    writer.close()
    await writer.wait_closed()
    held.release()  # its turn comes after it left
    await until(lambda: bool(seen), "the request recorded")
    [ex] = seen
    assert (ex.status, ex.error) == (499, "the client disconnected")
    await until(lambda: services.router.slot(m).inflight == 0, "the place given back")
    assert len(services.relay.inflight) == 0 and proxy_pair.waited == 1


async def test_the_official_openai_client_is_served_by_the_lane_plain_and_streamed(
    services: LlamaMan, proxy_pair: Ports
) -> None:
    """What the clients people use send (``Connection: keep-alive``, their own headers) qualifies."""
    await services.router.load("tiny-a")
    _, key = await services.auth.keys.create("sdk")
    oai = openai.AsyncOpenAI(base_url=f"{proxy_pair.lane.url}/v1", api_key=key, max_retries=0, timeout=60)
    try:
        hi: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
        reply = await oai.chat.completions.create(model="tiny-a", messages=hi, max_tokens=4)
        assert reply.choices[0].message.content == expected_text("A", 4)
        stream = await oai.chat.completions.create(model="tiny-a", messages=hi, max_tokens=5, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text == expected_text("A", 5)
        done = await oai.completions.create(model="tiny-a", prompt="hi", max_tokens=3)
        assert done.usage is not None and done.usage.completion_tokens == 3 and len(done.choices[0].text) == 3
    finally:
        await oai.close()
    assert proxy_pair.taken == 3


async def test_the_lane_writes_upstream_from_the_parsers_callback_and_a_client_leaving_still_ends_it(
    services: LlamaMan, proxy_pair: Ports
) -> None:
    """With a kept connection to llama-server free, the lane writes the request before its serving
    task runs. A client that leaves mid-answer still ends it in LlamaMan: it is recorded as 499, and
    leaves the place, the connection's turn and the in-flight list free for the next request.

    The instance has four slots. The xllamacpp build the tests run goes on generating an answer
    that comes whole after its connection closes (``tests/security/test_fast_lane_hangups.py``), so
    with one slot the next request would wait inside llama-server behind the rest of the hung-up
    generation: about a second here, and past this test's wait on a loaded machine."""
    await services.presets.put("tiny-a.gguf", SLOTS_APART)
    m = await services.router.load("tiny-a")
    relay = services.relay
    send_now = relay.send_now
    written: list[bool] = []

    def counted(*args: Any) -> Any:
        sent = send_now(*args)
        written.append(sent is not None)
        return sent

    relay.send_now = counted  # type: ignore[method-assign]
    seen: list[Exchange] = []
    relay.add_observer(seen.append)
    _, key = await services.auth.keys.create("early")
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy_pair.lane.port)
    answers = Answers()
    for n in (3, 4):  # the first finds no kept connection (a fresh instance), the second does
        writer.write(request(key, chat(n)))
        assert text_of((await answers.read(reader, 1))[0]) == expected_text("A", n)
    assert written[-1] is True
    writer.write(request(key, chat(2000)))
    await until(lambda: len(relay.inflight) == 1, "the long request running")
    writer.close()
    await writer.wait_closed()
    await until(lambda: any(ex.status == 499 for ex in seen), "the request recorded")
    await until(lambda: services.router.slot(m).inflight == 0, "the place given back")
    assert len(relay.inflight) == 0 and written[-1] is True
    async with client(proxy_pair.lane.url, {"Authorization": f"Bearer {key}"}) as c:
        r = await asyncio.wait_for(c.post("/v1/chat/completions", json=chat(5)), 30)
    assert r.json()["choices"][0]["message"]["content"] == expected_text("A", 5)
    assert [ex.status for ex in seen] == [200, 200, 499, 200]


async def test_a_whole_answer_on_the_lane_reaches_its_client_before_the_bookkeeping_after_it(
    services: LlamaMan, proxy_pair: Ports
) -> None:
    """The lease, the upstream connection and the accounting are settled once the answer is sent,
    not before: when the relay settles a plain answer, its bytes are already at the client (a
    loopback send lands in the receiver's buffer within the call), and each answer is still whole."""
    await services.router.load("tiny-a")
    relay = services.relay
    settle = relay._settle
    sock = socket.create_connection(("127.0.0.1", proxy_pair.lane.port))
    sock.setblocking(False)
    arrived: list[bool] = []

    def settled(*args: Any) -> None:
        try:
            waiting = sock.recv(65536, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            waiting = b""
        arrived.append(waiting.startswith(b"HTTP/1.1 200"))
        settle(*args)

    relay._settle = settled  # type: ignore[method-assign]
    _, key = await services.auth.keys.create("first")
    answers = Answers()
    loop = asyncio.get_running_loop()
    try:
        for n in (3, 4):  # the task's own upstream request, then one written from the callback
            await loop.sock_sendall(sock, request(key, chat(n)))
            while not answers.done:
                data = await asyncio.wait_for(loop.sock_recv(sock, 65536), 60)
                assert data, "the connection closed"
                answers.parser.feed_data(data)
            assert text_of(answers.done.pop()) == expected_text("A", n)
    finally:
        sock.close()
    assert arrived == [True, True]


async def test_a_whole_answer_is_written_from_llama_servers_parser_callback_before_the_task_wakes(
    services: LlamaMan, proxy_pair: Ports
) -> None:
    """Where the lane wrote the request from the parser's callback, the answer is written from
    llama-server's, as soon as it is whole: when the serving task wakes to read it, the client has
    it already. The task then only settles it, once: one record and one answer per request."""
    await services.router.load("tiny-a")
    sock = socket.create_connection(("127.0.0.1", proxy_pair.lane.port))
    sock.setblocking(False)
    arrived: list[bool] = []
    aread = UpstreamResponse.aread

    async def reading(self: UpstreamResponse) -> bytes:
        try:
            waiting = sock.recv(65536, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            waiting = b""
        arrived.append(waiting.startswith(b"HTTP/1.1 200"))
        return await aread(self)

    seen: list[Exchange] = []
    services.relay.add_observer(seen.append)
    _, key = await services.auth.keys.create("callback")
    answers = Answers()
    loop = asyncio.get_running_loop()
    UpstreamResponse.aread = reading  # type: ignore[method-assign]
    try:
        for n in (3, 4, 5):  # the first finds no kept connection: its task writes the request
            await loop.sock_sendall(sock, request(key, chat(n)))
            while len(answers.done) < 1:
                data = await asyncio.wait_for(loop.sock_recv(sock, 65536), 60)
                assert data, "the connection closed"
                answers.parser.feed_data(data)
            assert text_of(answers.done.pop()) == expected_text("A", n)
        # A second answer would be written before its record, by the task that records it.
        await until(lambda: len(seen) == 3, "three records")
        with pytest.raises(BlockingIOError):
            sock.recv(65536, socket.MSG_DONTWAIT)
    finally:
        UpstreamResponse.aread = aread  # type: ignore[method-assign]
        sock.close()
    assert arrived == [False, True, True]
    assert [ex.status for ex in seen] == [200, 200, 200] and answers.done == []
    assert [ex.completion_tokens for ex in seen] == [3, 4, 5]
