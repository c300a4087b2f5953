"""What the proxy port's fast lane takes and what it leaves to the full path: its decisions, one by one.

The lane may only take a request the full path would answer by relaying it, so every way a request
can differ from the plain case must send it the full way (``test_fast_lane_served`` shows the two
ways answer alike; ``tests/security/test_fast_lane_trust.py`` attacks it)."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from llamaman.app import LlamaMan
from llamaman.auth.access import Access, classify
from llamaman.core.config import Settings
from llamaman.gateway.http_protocol import GuardedHttpToolsProtocol
from llamaman.proxy.fast_lane import BODY_LIMIT, FAST_PATHS, Admitted, FastLane
from llamaman.proxy.fast_protocol import FastLaneProtocol

H = list[tuple[bytes, bytes]]
BODY = b'{"model":"tiny-a","messages":[{"role":"user","content":"hi"}],"max_tokens":4}'


def plain(key: str, body: bytes = BODY) -> H:
    return [
        (b"host", b"127.0.0.1:42069"),
        (b"user-agent", b"OpenAI/Python 1.0"),
        (b"authorization", f"Bearer {key}".encode()),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"keep-alive"),  # as httpx, and so the openai package, sends on every request
    ]


def swap(headers: H, name: bytes, value: bytes | None) -> H:
    """``headers`` with ``name`` given ``value`` (None: left out)."""
    out = [(k, v) for k, v in headers if k != name]
    return out if value is None else [*out, (name, value)]


@pytest.fixture
async def lane(box: LlamaMan) -> FastLane:
    return FastLane(box)


async def test_a_plain_request_with_a_key_that_may_use_everything_is_admitted(
    box: LlamaMan, lane: FastLane
) -> None:
    record, key = await box.auth.keys.create("plain")
    for path in ("/v1/chat/completions", "/v1/completions"):
        target = path.encode()
        a = lane.admit(b"POST", target, plain(key))
        assert isinstance(a, Admitted) and a.path == path and a.sampling
        assert a.identity is not None and a.identity.key_id == record.id
        # The caller's key stays here: llama-server gets its own, and no hop-by-hop header.
        assert [k for k, _ in a.forward] == [b"user-agent", b"content-type"]
        # ... and the lines written upstream are those headers, made once for the connection.
        assert a.forward_raw == b"".join(k + b": " + v + b"\r\n" for k, v in a.forward)
        assert key.encode() not in a.forward_raw
    alive = lane.admit(b"POST", b"/v1/chat/completions", swap(plain(key), b"connection", b" Keep-Alive"))
    assert alive is not None and [k for k, _ in alive.forward] == [b"user-agent", b"content-type"]
    # A client opening a connection per request (a burst of them) asks to close after the answer.
    closing = lane.admit(b"POST", b"/v1/chat/completions", swap(plain(key), b"connection", b"close"))
    assert closing is not None and [k for k, _ in closing.forward] == [b"user-agent", b"content-type"]
    embed = lane.admit(b"POST", b"/v1/embeddings", plain(key))
    assert embed is not None and not embed.sampling
    ready = lane.ready(embed, BODY)
    assert ready is not None and ready.model == "tiny-a" and ready.body["max_tokens"] == 4


@pytest.mark.parametrize(
    ("why", "method", "target"),
    [
        ("another method", b"PUT", b"/v1/chat/completions"),
        ("a query string", b"POST", b"/v1/chat/completions?autoload=false"),
        ("a path it does not relay plainly", b"POST", b"/v1/messages"),
        ("an absolute target", b"POST", b"http://x/v1/chat/completions"),
        ("a percent-encoded path", b"POST", b"/v1/chat%2Fcompletions"),
    ],
)
async def test_a_request_line_other_than_a_post_to_a_plain_path_goes_the_full_way(
    box: LlamaMan, lane: FastLane, why: str, method: bytes, target: bytes
) -> None:
    _, key = await box.auth.keys.create("plain")
    assert lane.admit(method, target, plain(key)) is None, why


@pytest.mark.parametrize(
    ("why", "name", "value"),
    [
        ("no content type", b"content-type", None),
        ("form", b"content-type", b"application/x-www-form-urlencoded"),
        ("text", b"content-type", b"text/plain"),
        ("no length", b"content-length", None),
        ("an empty body", b"content-length", b"0"),
        ("a signed length", b"content-length", b"+70"),
        ("a large body", b"content-length", str(BODY_LIMIT + 1).encode()),
        ("a chunked body", b"transfer-encoding", b"chunked"),
        ("expect", b"expect", b"100-continue"),
        ("upgrade", b"upgrade", b"websocket"),
        ("connection: close naming a header", b"connection", b"close, te"),
        ("connection naming a header", b"connection", b"keep-alive, te"),
        ("a connection upgrade", b"connection", b"upgrade"),
        ("an x-api-key", b"x-api-key", b"anything"),
        ("the node secret", b"x-llamaman-node-secret", b"guess"),
        ("a node name", b"x-llamaman-via", b"node-2"),
        ("loading progress", b"x-llamaman-loading-progress", b"1"),
        ("a basic credential", b"authorization", b"Basic eDp5"),
        ("an empty bearer", b"authorization", b"Bearer "),
        ("an unknown key", b"authorization", b"Bearer not-a-key"),
    ],
)
async def test_headers_other_than_the_plain_case_send_the_request_the_full_way(
    box: LlamaMan, lane: FastLane, why: str, name: bytes, value: bytes | None
) -> None:
    _, key = await box.auth.keys.create("plain")
    assert lane.admit(b"POST", b"/v1/chat/completions", swap(plain(key), name, value)) is None, why


async def test_a_header_given_twice_goes_the_full_way(box: LlamaMan, lane: FastLane) -> None:
    _, key = await box.auth.keys.create("plain")
    _, other = await box.auth.keys.create("other", allowed_models=["tiny-b"])
    for name, value in (
        (b"authorization", f"Bearer {other}".encode()),
        (b"authorization", f"Bearer {key}".encode()),
        (b"content-length", str(len(BODY)).encode()),
        (b"content-type", b"application/json"),
        (b"connection", b"keep-alive"),
    ):
        assert lane.admit(b"POST", b"/v1/chat/completions", [*plain(key), (name, value)]) is None, name


async def test_keys_with_anything_to_enforce_go_the_full_way(box: LlamaMan, lane: FastLane) -> None:
    """Model lists, rate limits and quotas are the full path's to check and count."""
    limited = [
        await box.auth.keys.create("models", allowed_models=["tiny-a"]),
        await box.auth.keys.create("rate", rpm_limit=100),
        await box.auth.keys.create("quota", daily_token_quota=10_000),
        await box.auth.keys.create("expired", expires_at=time.time() - 1),
    ]
    revoked, revoked_key = await box.auth.keys.create("revoked")
    await box.auth.keys.revoke(revoked.id)
    for _, key in [*limited, (revoked, revoked_key)]:
        assert lane.admit(b"POST", b"/v1/chat/completions", plain(key)) is None
    _, admin = await box.auth.keys.create("admin", scope="admin")
    assert lane.admit(b"POST", b"/v1/chat/completions", plain(admin)) is not None


async def test_without_a_key_only_a_box_that_requires_none_admits_the_request(
    box: LlamaMan, lane: FastLane
) -> None:
    anonymous = swap(plain("x"), b"authorization", None)
    await box.runtime.update({"require_auth": True})
    assert lane.admit(b"POST", b"/v1/chat/completions", anonymous) is None
    await box.runtime.update({"require_auth": False})
    a = lane.admit(b"POST", b"/v1/chat/completions", anonymous)
    assert a is not None and a.identity is None
    # A key that does not verify is still no way in: the full path says what is wrong with it.
    assert lane.admit(b"POST", b"/v1/chat/completions", plain("not-a-key")) is None


async def test_on_the_main_port_a_request_with_a_cookie_goes_the_full_way(
    box: LlamaMan, lane: FastLane
) -> None:
    # Only the main port takes the UI's session cookie as a credential, with its origin checks: a
    # request carrying one is the full path's there. The proxy port ignores the cookie altogether.
    _, key = await box.auth.keys.create("plain")
    main = box.fast_lane(main_port=True)
    assert main is not None
    with_cookie = [*plain(key), (b"cookie", b"llamaman_session=x")]
    assert main.admit(b"POST", b"/v1/chat/completions", with_cookie) is None
    assert main.admit(b"POST", b"/v1/chat/completions", plain(key)) is not None
    assert lane.admit(b"POST", b"/v1/chat/completions", with_cookie) is not None
    await box.runtime.update({"require_auth": False})
    anonymous = [(k, v) for k, v in with_cookie if k != b"authorization"]
    assert main.admit(b"POST", b"/v1/chat/completions", anonymous) is None
    assert lane.admit(b"POST", b"/v1/chat/completions", anonymous) is not None


async def test_a_box_with_peers_leaves_every_request_to_the_full_path(box: LlamaMan, lane: FastLane) -> None:
    _, key = await box.auth.keys.create("plain")
    admitted = lane.admit(b"POST", b"/v1/chat/completions", plain(key))
    assert admitted is not None
    await box.peers.create("elsewhere", "http://127.0.0.1:9", None, "*", enabled=False)
    try:
        assert lane.admit(b"POST", b"/v1/chat/completions", plain(key)) is None
        ready = lane.ready(admitted, BODY)
        assert ready is not None and lane.lease(ready) is None  # another box may be the place
    finally:
        await box.peers.delete("elsewhere")


@pytest.mark.parametrize(
    ("why", "body"),
    [
        ("not JSON", b'{"model": "tiny-a",'),
        ("an array", b'[{"model": "tiny-a"}]'),
        ("no model", b'{"messages": []}'),
        ("a model that is no string", b'{"model": 7}'),
        ("a blank model", b'{"model": "  "}'),
        ("a model given twice", b'{"model": "tiny-a", "model": "tiny-b"}'),
        ("a byte-order mark", b'\xef\xbb\xbf{"model": "tiny-a"}'),
        ("NaN", b'{"model": "tiny-a", "temperature": NaN}'),
        ("the loading-progress field", b'{"model": "tiny-a", "llamaman_loading_progress": true}'),
    ],
)
async def test_a_body_the_full_path_would_refuse_or_treat_apart_goes_the_full_way(
    box: LlamaMan, lane: FastLane, why: str, body: bytes
) -> None:
    _, key = await box.auth.keys.create("plain")
    admitted = lane.admit(b"POST", b"/v1/chat/completions", plain(key, body))
    assert admitted is not None
    assert lane.ready(admitted, body) is None, why


async def test_a_model_that_is_not_loaded_gets_no_place_from_the_lane(box: LlamaMan, lane: FastLane) -> None:
    _, key = await box.auth.keys.create("plain")
    admitted = lane.admit(b"POST", b"/v1/chat/completions", plain(key))
    assert admitted is not None
    for body in (BODY, BODY.replace(b"tiny-a", b"no-such-model")):
        ready = lane.ready(admitted, body)
        assert ready is not None and lane.lease(ready) is None  # loading and 404s are the full path's


async def test_the_setting_turns_the_lane_off(make_settings: Callable[..., Settings]) -> None:
    assert isinstance(LlamaMan(make_settings()).fast_lane(), FastLane)
    assert LlamaMan(make_settings(LLAMAMAN_PROXY_FAST_LANE="0")).fast_lane() is None


async def test_the_main_port_is_served_with_a_lane_that_leaves_cookies_to_the_full_path_unless_turned_off(
    make_settings: Callable[..., Settings],
) -> None:
    protocol = LlamaMan(make_settings()).main_protocol()
    assert issubclass(protocol, FastLaneProtocol)
    anonymous = swap(plain("x"), b"authorization", None)  # keys are not required in this test
    assert protocol.lane.admit(b"POST", b"/v1/chat/completions", anonymous) is not None
    cookie = [*anonymous, (b"cookie", b"s=1")]
    assert protocol.lane.admit(b"POST", b"/v1/chat/completions", cookie) is None
    assert LlamaMan(make_settings(LLAMAMAN_PROXY_FAST_LANE="0")).main_protocol() is GuardedHttpToolsProtocol


def test_every_path_the_lane_serves_is_a_model_endpoint_that_any_inference_key_may_call() -> None:
    for target, (path, _) in FAST_PATHS.items():
        assert target.decode() == path
        assert classify(path, "proxy") is Access.MODEL
        assert classify(path, "main") is Access.MODEL  # the main port's lane serves them too


async def test_the_next_request_on_a_connection_with_the_same_headers_takes_its_admission_without_the_checks(
    box: LlamaMan, lane: FastLane, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An SDK client sends the same headers on its connection every time but the length: what
    only the headers decide is not decided again, and the key is not hashed again."""
    _, key = await box.auth.keys.create("again")
    path = b"/v1/chat/completions"
    first = lane.admit(b"POST", path, plain(key))
    assert first is not None
    checks = 0
    authenticate = box.auth.authenticate

    def counting(*args: object, **kwargs: object) -> object:
        nonlocal checks
        checks += 1
        return authenticate(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(box.auth, "authenticate", counting)
    longer = BODY + b" "
    again = lane.admit(b"POST", path, plain(key, longer), first)
    assert again is not None and checks == 0
    assert again.length == len(longer) and again.identity is first.identity and again.forward == first.forward
    assert again.forward_raw is first.forward_raw
    assert lane.admit(b"POST", path, plain(key, longer), again) is not None and checks == 0
    # Another target or any other header: checked whole.
    other_agent = [(k, b"curl/8" if k == b"user-agent" else v) for k, v in plain(key)]
    assert lane.admit(b"POST", b"/v1/completions", plain(key), first) is not None and checks == 1
    assert lane.admit(b"POST", path, other_agent, first) is not None and checks == 2
    assert lane.admit(b"PUT", path, plain(key), first) is None
    assert lane.admit(b"POST", path, plain(key, b"x" * (BODY_LIMIT + 1)), first) is None


async def test_a_key_revoked_expired_or_limited_since_the_last_request_on_the_connection_goes_the_full_way(
    box: LlamaMan, lane: FastLane, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = box.auth.keys
    path = b"/v1/chat/completions"
    changes = [
        ("revoked", lambda key_id: keys.revoke(key_id)),
        ("expired", lambda key_id: keys.update(key_id, {"expires_at": time.time() - 1})),
        ("a quota", lambda key_id: keys.update(key_id, {"daily_token_quota": 10_000})),
        ("a rate limit", lambda key_id: keys.update(key_id, {"rpm_limit": 60})),
    ]
    for why, change in changes:
        record, key = await keys.create(why)
        first = lane.admit(b"POST", path, plain(key))
        assert first is not None, why
        await change(record.id)
        assert lane.admit(b"POST", path, plain(key), first) is None, why
    # A key that runs out while the connection stays open.
    record, key = await keys.create("soon")
    first = lane.admit(b"POST", path, plain(key))
    assert first is not None
    await keys.update(record.id, {"expires_at": time.time() + 3600})
    first = lane.admit(b"POST", path, plain(key))  # admitted with the new expiry, not yet reached
    assert first is not None
    later = time.time() + 7200
    monkeypatch.setattr(time, "time", lambda: later)
    assert lane.admit(b"POST", path, plain(key), first) is None
    # A box that starts requiring keys turns a keyless connection away on its next request.
    anonymous = swap(plain("x"), b"authorization", None)
    await box.runtime.update({"require_auth": False})
    first = lane.admit(b"POST", path, anonymous)
    assert first is not None
    await box.runtime.update({"require_auth": True})
    assert lane.admit(b"POST", path, anonymous, first) is None
