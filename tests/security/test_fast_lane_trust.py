"""The proxy port's fast lane answers requests without the ASGI stack, where every refusal lives. It
must not be a way around one: a key's model list, its rate and its quota, a revoked key, a box that
requires a key, the node secret; nor may framing tricks make it read a request other than the server
does. Each attack runs on a port with the lane and on one without it, which must answer alike."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest

from llamaman.app import LlamaMan
from llamaman.cluster.forward import NODE_HEADER, VIA_HEADER
from llamaman.testing.tiny_gguf import expected_text
from tests.proxy.lane_ports import Answers, Ports, client, exchange, request, text_of

pytestmark = [pytest.mark.auth, pytest.mark.llama]

HI = [{"role": "user", "content": "hi"}]


def chat(model: str = "tiny-a", n: int = 2) -> dict[str, Any]:
    return {"model": model, "messages": HI, "max_tokens": n}


async def on_both(
    pair: Ports, path: str, body: Any, headers: list[tuple[str, str]]
) -> tuple[httpx.Response, httpx.Response]:
    """The same request to the port with the lane and to the one without it."""
    answers = []
    for server in (pair.lane, pair.full):
        async with client(server.url) as c:
            content = body if isinstance(body, bytes) else json.dumps(body).encode()
            sent = [("content-type", "application/json"), *headers]
            answers.append(await c.post(path, content=content, headers=sent))
    return answers[0], answers[1]


async def test_a_key_limited_to_one_model_gets_no_other_by_any_spelling_on_the_lane_port(
    services: LlamaMan, proxy_pair: Ports
) -> None:
    await services.router.load("tiny-a")
    await services.router.load("tiny-b")  # loaded and idle: the lane would have a place for it at once
    _, key = await services.auth.keys.create("only-a", allowed_models=["tiny-a"])
    auth = [("authorization", f"Bearer {key}")]
    for name in ("tiny-b", "tiny-b:latest", "tiny-b.gguf", " tiny-b ", "TINY-B"):
        for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
            body = {**chat(name), "prompt": "hi", "input": "hi"}
            lane, full = await on_both(proxy_pair, path, body, auth)
            assert lane.status_code in (400, 403, 404), (path, name, lane.status_code, lane.text)
            assert (lane.status_code, lane.json()) == (full.status_code, full.json()), (path, name)
    for raw in (
        b'{"model": "tiny-\\u0062", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}',
        b'{"model": "tiny-a", "messages": [{"role": "user", "content": "hi"}], "model": "tiny-b"}',
    ):
        lane, full = await on_both(proxy_pair, "/v1/chat/completions", raw, auth)
        assert lane.status_code in (400, 403) and lane.status_code == full.status_code, raw
    # Its own model it gets, by the full path that checks the list.
    lane, _ = await on_both(proxy_pair, "/v1/chat/completions", chat("tiny-a", 3), auth)
    assert lane.json()["choices"][0]["message"]["content"] == expected_text("A", 3)
    assert proxy_pair.taken == 0


async def test_a_keys_rate_and_quota_hold_on_the_lane_port(services: LlamaMan, proxy_pair: Ports) -> None:
    await services.router.load("tiny-a")
    _, paced = await services.auth.keys.create("paced", rpm_limit=2)
    _, thrifty = await services.auth.keys.create("thrifty", daily_token_quota=5)
    async with client(proxy_pair.lane.url) as c:
        h = {"Authorization": f"Bearer {paced}"}
        statuses = [
            (await c.post("/v1/chat/completions", json=chat(), headers=h)).status_code for _ in range(3)
        ]
        assert statuses == [200, 200, 429]
        h = {"Authorization": f"Bearer {thrifty}"}
        first = await c.post("/v1/chat/completions", json=chat(n=4), headers=h)
        assert first.status_code == 200 and first.json()["usage"]["total_tokens"] > 5
        assert (await c.post("/v1/chat/completions", json=chat(), headers=h)).status_code == 429
    assert proxy_pair.taken == 0


async def test_a_key_revoked_between_two_requests_on_one_connection_is_refused_the_second_time(
    services: LlamaMan, proxy_pair: Ports
) -> None:
    await services.router.load("tiny-a")
    record, key = await services.auth.keys.create("soon-gone")
    async with client(proxy_pair.lane.url) as c:
        h = {"Authorization": f"Bearer {key}"}
        r = await c.post("/v1/chat/completions", json=chat(n=3), headers=h)
        assert r.json()["choices"][0]["message"]["content"] == expected_text("A", 3)
        assert proxy_pair.taken == 1  # the lane's
        await services.auth.keys.revoke(record.id)
        r = await c.post("/v1/chat/completions", json=chat(n=3), headers=h)
        assert r.status_code == 401 and "revoked" in r.text
    assert proxy_pair.taken == 1


async def test_a_key_given_a_quota_or_expired_between_requests_on_one_connection_is_checked_whole_again(
    services: LlamaMan, proxy_pair: Ports
) -> None:
    """The lane does not check again what only a request's headers decide when the next request on
    the connection repeats them; what the key is may still change between the two."""
    await services.router.load("tiny-a")
    keys = services.auth.keys
    record, key = await keys.create("changes-later")
    async with client(proxy_pair.lane.url, {"Authorization": f"Bearer {key}"}) as c:
        r = await c.post("/v1/chat/completions", json=chat(n=3))
        assert r.status_code == 200 and proxy_pair.taken == 1
        await keys.update(record.id, {"daily_token_quota": 1})  # less than the first request spent
        r = await c.post("/v1/chat/completions", json=chat(n=3))
        assert r.status_code == 429 and proxy_pair.taken == 1, r.text
        await keys.update(record.id, {"daily_token_quota": 0, "expires_at": time.time() - 1})
        r = await c.post("/v1/chat/completions", json=chat(n=3))
        assert r.status_code == 401 and "expired" in r.text
    assert proxy_pair.taken == 1


async def test_a_narrower_key_on_a_connection_a_broad_key_used_first_gets_only_what_it_may(
    services: LlamaMan, proxy_pair: Ports
) -> None:
    """The lane takes over a connection's last admission only for the same header bytes: a request
    that changes nothing but its key (a key limited to tiny-a asking for tiny-b, a revoked key) is
    checked whole, and answered as the port without the lane answers it."""
    await services.router.load("tiny-a")
    await services.router.load("tiny-b")  # loaded and idle: the lane would have a place at once
    keys = services.auth.keys
    _, broad = await keys.create("broad")
    _, narrow = await keys.create("only-a", allowed_models=["tiny-a"])
    gone, revoked = await keys.create("gone")
    await keys.revoke(gone.id)
    first = request(broad, chat("tiny-b", n=3))
    for other in (narrow, revoked):
        second = request(other, chat("tiny-b", n=3))
        assert len(second) == len(first)  # the same layout, the same length: only the key differs
        answers, full = Answers(), Answers()
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy_pair.lane.port)
        try:
            writer.write(first)
            assert text_of((await answers.read(reader, 1))[0]) == expected_text("B", 3)
            writer.write(second)
            (got,) = await answers.read(reader, 1)
        finally:
            writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy_pair.full.port)
        try:
            writer.write(second)
            (want,) = await full.read(reader, 1)
        finally:
            writer.close()
        assert got[0] in (401, 403) and got == want, (got, want)
    assert proxy_pair.taken == 2  # the broad key's requests only


async def test_requests_without_a_valid_key_are_refused_alone_or_pipelined_behind_a_served_one(
    services: LlamaMan, proxy_pair: Ports
) -> None:
    await services.router.load("tiny-a")
    _, key = await services.auth.keys.create("first-in-line")
    bare = request(key, chat(n=3)).replace(f"Authorization: Bearer {key}\r\n".encode(), b"")
    guessed = request("llm-guess", chat(n=3))
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy_pair.lane.port)
    answers = Answers()
    try:
        writer.write(request(key, chat(n=3)) + bare + guessed + request(key, chat(n=4)))
        got = await answers.read(reader, 4)
        assert proxy_pair.taken == 1  # the first; those behind it waited in the server's queue
        for alone in (bare, guessed):  # each on the idle connection, where the lane looks first
            writer.write(alone)
            got += await answers.read(reader, 1)
    finally:
        writer.close()
    assert text_of(got[0]) == expected_text("A", 3)
    assert text_of(got[3]) == expected_text("A", 4)
    assert [status for status, _ in got[1:3] + got[4:]] == [401] * 4
    assert proxy_pair.taken == 1


@pytest.mark.parametrize(
    "why, headers",
    [
        ("the limited key first", ["only-a", "any"]),
        ("the limited key last", ["any", "only-a"]),
    ],
)
async def test_two_keys_in_one_request_never_reach_the_lane(
    services: LlamaMan, proxy_pair: Ports, why: str, headers: list[str]
) -> None:
    await services.router.load("tiny-b")
    keys = {
        "only-a": (await services.auth.keys.create("only-a", allowed_models=["tiny-a"]))[1],
        "any": (await services.auth.keys.create("any"))[1],
    }
    first, second = (keys[name] for name in headers)
    for sent in (
        [("authorization", f"Bearer {first}"), ("authorization", f"Bearer {second}")],
        [("x-api-key", first), ("authorization", f"Bearer {second}")],
        [("authorization", f"Bearer {first}"), ("x-api-key", second)],
    ):
        lane, full = await on_both(proxy_pair, "/v1/chat/completions", chat("tiny-b"), sent)
        assert lane.status_code == full.status_code, (why, sent, lane.text, full.text)
    assert proxy_pair.taken == 0


async def test_a_guessed_node_secret_beside_a_key_is_left_to_the_full_path(
    services: LlamaMan, proxy_pair: Ports
) -> None:
    await services.router.load("tiny-a")
    _, key = await services.auth.keys.create("plain")
    for extra in ([(NODE_HEADER, "guess")], [(VIA_HEADER, "node-2")], [(NODE_HEADER, ""), (VIA_HEADER, "x")]):
        sent = [("authorization", f"Bearer {key}"), *extra]
        lane, full = await on_both(proxy_pair, "/v1/chat/completions", chat(n=2), sent)
        assert lane.status_code == full.status_code == 200, extra
        # Without a key, a box that requires one refuses it whatever the node headers say.
        lane, full = await on_both(proxy_pair, "/v1/chat/completions", chat(n=2), extra)
        assert lane.status_code == full.status_code == 401, extra
    assert proxy_pair.taken == 0


def _framed(key: str, framing: str, body: bytes) -> bytes:
    return (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\n{framing}\r\n"
    ).encode() + body


async def test_ambiguous_framing_is_read_alike_with_and_without_the_lane(
    services: LlamaMan, proxy_pair: Ports
) -> None:
    """A request whose length two headers tell differently, with a second request hidden where one
    reading would see body and another a new request: both ports must answer the very same."""
    await services.router.load("tiny-a")
    await services.router.load("tiny-b")
    _, key = await services.auth.keys.create("plain")
    _, only_a = await services.auth.keys.create("only-a", allowed_models=["tiny-a"])
    body = json.dumps(chat(n=2)).encode()
    n = len(body)
    hidden = request(only_a, chat("tiny-b", 3))  # tiny-b, for a key that may not use it
    chunked = b"%x\r\n%b\r\n0\r\n\r\n" % (len(body), body)
    attacks = {
        "length and chunked": _framed(
            key, f"Content-Length: {len(chunked)}\r\nTransfer-Encoding: chunked\r\n", chunked + hidden
        ),
        "chunked and length": _framed(
            key, f"Transfer-Encoding: chunked\r\nContent-Length: {len(body)}\r\n", chunked + hidden
        ),
        "two lengths": _framed(
            key, f"Content-Length: {n}\r\nContent-Length: {n + len(hidden)}\r\n", body + hidden
        ),
        "a length with a sign": _framed(key, f"Content-Length: +{n}\r\n", body + hidden),
        "a length in two values": _framed(key, f"Content-Length: {n}, {n}\r\n", body + hidden),
        "a folded header": _framed(key, f"Content-Length: {n}\r\n x-fold: 1\r\n", body + hidden),
    }
    last = b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n"
    for why, data in attacks.items():
        lane = await exchange(proxy_pair.lane.port, data + last)
        full = await exchange(proxy_pair.full.port, data + last)
        assert [s for s, _ in lane] == [s for s, _ in full] == [400], why
        # Nothing reads the hidden request as one: tiny-b never answers it.
        assert not any(expected_text("B", 3).encode() in b for _, b in lane + full), why
    assert proxy_pair.taken == 0
    # Told plainly, the same bytes are two requests, each judged on its own: the second one's key may
    # not use tiny-b, with or without the lane.
    plain = _framed(key, f"Content-Length: {n}\r\n", body + hidden) + last
    lane = await exchange(proxy_pair.lane.port, plain)
    full = await exchange(proxy_pair.full.port, plain)
    assert [s for s, _ in lane] == [s for s, _ in full] == [200, 403, 200]
    assert proxy_pair.taken == 1


async def test_a_full_place_lets_no_caller_queue_on_the_lane_past_a_check(
    services: LlamaMan, proxy_pair: Ports
) -> None:
    """Requests behind a full place wait on the lane; the checks come before that wait. Each
    attacker is refused at once on both ports, with the same answer, and never joins the queue."""
    await services.presets.put("tiny-b.gguf", {"max_concurrent": 1, "max_queue_depth": 4})
    await services.router.load("tiny-a")
    held = await services.router.acquire("tiny-b")  # tiny-b's one place, taken
    _, only_a = await services.auth.keys.create("only-a", allowed_models=["tiny-a"])
    gone, revoked = await services.auth.keys.create("gone")
    await services.auth.keys.revoke(gone.id)
    _, paced = await services.auth.keys.create("paced", rpm_limit=1)
    async with client(proxy_pair.lane.url, {"Authorization": f"Bearer {paced}"}) as c:
        assert (await c.post("/v1/chat/completions", json=chat("tiny-a"))).status_code == 200
    attackers = {
        "a key for another model": [("authorization", f"Bearer {only_a}")],
        "a revoked key": [("authorization", f"Bearer {revoked}")],
        "a key over its rate": [("authorization", f"Bearer {paced}")],
        "a wrong key": [("authorization", "Bearer llm-guess")],
        "no key": [],
    }
    try:
        for why, headers in attackers.items():
            told = []
            for server in (proxy_pair.lane, proxy_pair.full):
                async with client(server.url) as c:
                    asking = asyncio.create_task(
                        c.post("/v1/chat/completions", json=chat("tiny-b"), headers=headers)
                    )
                    for _ in range(400):
                        if asking.done() or services.relay.inflight.snapshot():
                            break
                        await asyncio.sleep(0.005)
                    assert asking.done() and not services.relay.inflight.snapshot(), f"{why}: it queued"
                    r = await asking
                told.append((r.status_code, r.json()))
            assert told[0] == told[1] and told[0][0] in (401, 403, 429), why
    finally:
        held.release()
    assert proxy_pair.waited == 0 and proxy_pair.taken == 0


async def test_a_request_asking_to_close_its_connection_hides_no_request_behind_it(
    services: LlamaMan, proxy_pair: Ports
) -> None:
    """The lane takes ``Connection: close`` and closes once it has answered. A request written
    behind it on the same connection (one for a model the key may not use, one with a valid key)
    is answered by neither port, however the header is spelled; and a key with a model list still
    goes the full way and is refused alike."""
    await services.router.load("tiny-a")
    await services.router.load("tiny-b")
    _, key = await services.auth.keys.create("plain")
    _, only_a = await services.auth.keys.create("only-a", allowed_models=["tiny-a"])
    behind = request(only_a, chat("tiny-b", 3)) + request(key, chat("tiny-b", 4))
    for spelling in ("close", "Close", " close ", "CLOSE", "close, keep-alive", "keep-alive, close"):
        first = request(key, chat(n=2), extra=f"Connection: {spelling}\r\n")
        lane = await exchange(proxy_pair.lane.port, first + behind)
        full = await exchange(proxy_pair.full.port, first + behind)
        assert [s for s, _ in lane] == [s for s, _ in full] == [200], spelling
        assert text_of(lane[0]) == text_of(full[0]) == expected_text("A", 2), spelling
    taken = proxy_pair.taken
    assert taken == 4  # the four plain spellings; the lists of tokens went the full way
    limited = request(only_a, chat("tiny-b", 2), extra="Connection: close\r\n")
    lane = await exchange(proxy_pair.lane.port, limited + behind)
    full = await exchange(proxy_pair.full.port, limited + behind)
    assert [s for s, _ in lane] == [s for s, _ in full] == [403]
    assert proxy_pair.taken == taken


async def test_a_fault_in_the_lanes_decision_hands_the_full_path_a_request_it_still_checks_whole(
    services: LlamaMan, proxy_pair: Ports
) -> None:
    # The lane's own fault (here: each of its header checks raising) sends the request the full way,
    # which must refuse it exactly as the port without the lane does: a fallback is no way around.
    await services.router.load("tiny-a")
    await services.router.load("tiny-b")
    _, limited = await services.auth.keys.create("only-a", allowed_models=["tiny-a"])
    _, revoked_key = await services.auth.keys.create("revoked")
    revoked = next(k for k in services.auth.keys.by_id.values() if k.name == "revoked")
    await services.auth.keys.revoke(revoked.id)
    lane: Any = proxy_pair.lane.lane

    def faulty(*args: Any) -> Any:
        raise RuntimeError("a fault of the lane's own")

    lane.admit = faulty
    for headers in (
        [("authorization", f"Bearer {limited}")],  # a model its key does not allow
        [("authorization", f"Bearer {revoked_key}")],
        [("authorization", "Bearer llm-guessed")],
        [],
    ):
        lane_answer, full = await on_both(proxy_pair, "/v1/chat/completions", chat("tiny-b"), headers)
        assert lane_answer.status_code in (401, 403), (headers, lane_answer.status_code, lane_answer.text)
        assert (lane_answer.status_code, lane_answer.json()) == (full.status_code, full.json()), headers
    assert proxy_pair.taken == 0
