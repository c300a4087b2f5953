"""One strict body parse: a body the model check cannot read is refused before any handler runs,
so no encoding (byte-order mark, UTF-16/32, a key given twice, odd model fields) lets a key limited to
some models reach another. Performed against the real main and proxy apps and an instance port."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from llamaman.app import LlamaMan, create_app
from llamaman.core.config import Settings
from llamaman.gateway.bodies import BodyError, parse_json
from llamaman.proxy.app import create_proxy_app

pytestmark = pytest.mark.auth

HI = [{"role": "user", "content": "hi"}]
PATHS = ("/v1/chat/completions", "/api/chat", "/v1/messages", "/completion", "/v1/completions")


@pytest.fixture
async def box(make_settings: Callable[..., Settings]) -> AsyncIterator[LlamaMan]:
    """LlamaMan without a llama-server: a refused request must never need one."""
    services = LlamaMan(make_settings(LLAMA_SERVER_BIN="/nonexistent/llama-server"))
    await services.start()
    try:
        yield services
    finally:
        await services.stop()


def client(services: LlamaMan, surface: str) -> httpx.AsyncClient:
    app: Any = create_proxy_app(services)
    if surface == "main":
        app = create_app(services, manage_lifecycle=False)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://llamaman.test")


async def limited_key(services: LlamaMan) -> dict[str, str]:
    _, key = await services.auth.keys.create("only-a", allowed_models=["tiny-a"])
    return {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}


def body(model: str = "tiny-b") -> dict[str, Any]:
    return {"model": model, "messages": HI, "max_tokens": 4, "prompt": "hi"}


def forbidden_variants() -> dict[str, bytes]:
    plain = json.dumps(body()).encode()
    return {
        "utf8-bom": b"\xef\xbb\xbf" + plain,
        "utf16-le-bom": plain.decode().encode("utf-16"),
        "utf16-be": plain.decode().encode("utf-16-be"),
        "utf32": plain.decode().encode("utf-32"),
        "duplicate-keys": b'{"model":"tiny-a","model":"tiny-b","messages":[],"prompt":"hi"}',
        "duplicate-keys-reversed": b'{"model":"tiny-b","model":"tiny-a","messages":[],"prompt":"hi"}',
        "escaped-key-duplicate": b'{"model":"tiny-a","\\u006dodel":"tiny-b","prompt":"hi"}',
        "escaped-colon-duplicate": b'{"model":"tiny-a","model":"tiny-b\\u003a","prompt":"hi"}',
        "nested-model": b'{"model":{"name":"tiny-b"},"prompt":"hi"}',
        "list-model": b'{"model":["tiny-b"],"prompt":"hi"}',
        "number-model": b'{"model":1,"prompt":"hi"}',
        "array-body": b'[{"model":"tiny-b"}]',
        "nan": b'{"model":"tiny-b","temperature":NaN}',
        "infinity": b'{"model":"tiny-b","temperature":Infinity}',
        "huge-number": b'{"model":"tiny-b","temperature":1e400}',
        "deep": b'{"model":"tiny-b","x":' + b"[" * 100 + b"]" * 100 + b"}",
        "very-deep": b"[" * 100_000 + b"]" * 100_000,
        "bad-utf8": b'{"model":"tiny-b\xff","prompt":"hi"}',
        "lone-surrogate": b'{"model":"tiny-b\\ud800","prompt":"hi"}',
        "truncated": b'{"model":"tiny-b"',
    }


@pytest.mark.parametrize("surface", ["proxy", "main"])
async def test_every_odd_encoding_of_a_forbidden_model_is_refused(box: LlamaMan, surface: str) -> None:
    h = await limited_key(box)
    async with client(box, surface) as c:
        for name, raw in forbidden_variants().items():
            for path in PATHS:
                r = await c.post(path, content=raw, headers=h)
                assert r.status_code in (400, 403), (name, path, r.status_code, r.text)
                payload = r.json()
                if path.startswith("/api/"):
                    assert isinstance(payload["error"], str), (name, path)
                elif path == "/v1/messages":
                    assert payload["type"] == "error", (name, path)
                else:
                    assert isinstance(payload["error"]["message"], str), (name, path)
        assert box.supervisor.instances == {}  # nothing was launched for any of them


@pytest.mark.parametrize("surface", ["proxy", "main"])
async def test_refusals_name_the_problem(box: LlamaMan, surface: str) -> None:
    h = await limited_key(box)
    v = forbidden_variants()
    async with client(box, surface) as c:
        r = await c.post("/v1/chat/completions", content=v["utf8-bom"], headers=h)
        assert r.status_code == 400 and "byte-order mark" in r.json()["error"]["message"]
        r = await c.post("/api/chat", content=v["utf16-le-bom"], headers=h)
        assert r.status_code == 400 and "UTF-8" in r.json()["error"]
        r = await c.post("/api/chat", content=v["duplicate-keys"], headers=h)
        assert r.status_code == 400 and "'model' more than once" in r.json()["error"]
        r = await c.post("/v1/chat/completions", content=v["nested-model"], headers=h)
        assert r.status_code == 400 and "'model' must be a string" in r.json()["error"]["message"]
        r = await c.post("/v1/messages", content=v["deep"], headers=h)
        assert r.status_code == 400 and "deeper than 64" in r.json()["error"]["message"]
        assert r.json()["error"]["type"] == "invalid_request_error"
        r = await c.post("/api/generate", content=v["nan"], headers=h)
        assert r.status_code == 400 and "'temperature' must be a finite number" in r.json()["error"]


@pytest.mark.parametrize("surface", ["proxy", "main"])
async def test_an_unrestricted_key_gets_the_same_strict_parse(box: LlamaMan, surface: str) -> None:
    """The handler sees what the check saw: the same refusals without any allow-list."""
    _, key = await box.auth.keys.create("all")
    h = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    async with client(box, surface) as c:
        for name, raw in forbidden_variants().items():
            r = await c.post("/v1/chat/completions", content=raw, headers=h)
            assert r.status_code == 400, (name, r.status_code, r.text)


@pytest.mark.parametrize("surface", ["proxy", "main"])
async def test_plain_variants_still_checked(box: LlamaMan, surface: str) -> None:
    h = await limited_key(box)
    async with client(box, surface) as c:
        for raw in (
            b'  \n\t{"model":"tiny-b","messages":[]}',
            b'{"model" : "tiny-b" , "messages":[]}',
            b'{"\\u006dodel":"tiny-b","messages":[]}',
            b'{"model":"tiny-\\u0062","messages":[]}',
            b'{"model":" tiny-b ","messages":[]}',
            b'{"model":"TINY-B","messages":[]}',
            b'{"model":"tiny-b:latest","messages":[]}',
        ):
            for ctype in ("application/json", "text/plain", "application/x-www-form-urlencoded", ""):
                headers = {**h, "Content-Type": ctype}
                r = await c.post("/v1/chat/completions", content=raw, headers=headers)
                # 415: a model endpoint takes JSON only, so the other content types stop even earlier.
                refusals = (400, 403) if ctype == "application/json" else (415,)
                assert r.status_code in refusals, (raw, ctype, r.status_code, r.text)


async def test_rest_bodies_are_parsed_strictly_too(box: LlamaMan) -> None:
    _, key = await box.auth.keys.create("admin", scope="admin")
    h = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    async with client(box, "main") as c:
        for raw in (
            b'\xef\xbb\xbf{"max_models": 2}',
            b'{"max_models": 2, "max_models": 3}',
            b'{"idle_timeout_min": NaN}',
            b'{"idle_timeout_min": 1e400}',
        ):
            r = await c.post("/api/settings", content=raw, headers=h)
            assert r.status_code == 400, (raw, r.text)
            assert r.json()["detail"]
        r = await c.post("/api/auth/login", content=b'\xef\xbb\xbf{"username":"a","password":"b"}')
        assert r.status_code == 400


def test_parser_accepts_what_clients_send() -> None:
    raw = json.dumps(
        {"model": "m", "messages": [{"role": "user", "content": "a: b :: c"}], "stop": [":"], "x": {"y:": 1}}
    ).encode()
    assert parse_json(raw)["stop"] == [":"]
    assert parse_json(b'{"a":"\\u003a"}') == {"a": ":"}  # an escaped colon alone is fine
    assert parse_json(b'{"a":{"a":1},"b":{"a":2}}') == {"a": {"a": 1}, "b": {"a": 2}}
    assert parse_json(b"[" * 64 + b"]" * 64) is not None
    with pytest.raises(BodyError):
        parse_json(b"[" * 65 + b"]" * 65)
    with pytest.raises(BodyError, match="more than once"):
        parse_json(b'[{"a":1},{"b":{"c":1,"c":1}}]')


@pytest.mark.parametrize("surface", ["proxy", "main"])
@pytest.mark.parametrize(
    "value", ["NaN", "Infinity", "-Infinity", "1e400", "1e30", "99999999999999999999999", "-5", "1.5"]
)
async def test_num_ctx_out_of_range_is_refused_naming_it(box: LlamaMan, surface: str, value: str) -> None:
    _, key = await box.auth.keys.create("all")
    h = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    async with client(box, surface) as c:
        for path in ("/api/chat", "/api/generate"):
            raw = '{"model":"tiny-a","prompt":"hi","messages":[],"options":{"num_ctx":' + value + "}}"
            r = await c.post(path, content=raw.encode(), headers=h)
            assert r.status_code == 400, (path, value, r.text)
            assert "num_ctx" in r.json()["error"], r.text
        for field in ("temperature", "top_k", "seed", "num_predict"):
            raw = '{"model":"tiny-a","prompt":"hi","options":{"' + field + '":' + value + "}}"
            r = await c.post("/api/generate", content=raw.encode(), headers=h)
            assert r.status_code in (400, 503), (field, value, r.text)  # 503: no llama-server here
            if r.status_code == 400:
                assert field in r.json()["error"], r.text


def test_duplicates_are_found_in_large_and_bracket_heavy_bodies() -> None:
    big = '{"model":"a","x":"' + "y:" * 200_000 + '","model":"b"}'
    with pytest.raises(BodyError, match="'model' more than once"):
        parse_json(big.encode())
    many = '{"model":"a","list":[' + ",".join(['{"k":"v:w"}'] * 100) + '],"model":"b"}'
    with pytest.raises(BodyError, match="'model' more than once"):
        parse_json(many.encode())
    fine = '{"model":"a","list":[' + ",".join(['{"k":"v:w"}'] * 100) + "]}"
    assert len(parse_json(fine.encode())["list"]) == 100
    assert parse_json(('{"x":"' + "y:" * 200_000 + '"}').encode())["x"].count(":") == 200_000
