"""Sign-in throttling: attempts are counted before the password is checked, per client and per
username, so parallel guesses meet the limit; forwarded headers name the client only when they come
from a proxy the operator trusts (LLAMAMAN_TRUSTED_PROXIES). Against a real uvicorn server."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import pytest
from pydantic import ValidationError
from starlette.requests import Request

from llamaman.auth.clients import THROTTLE_AFTER, THROTTLE_USER_AFTER, client_address
from llamaman.core.config import Settings
from tests.security.signin_support import ADMIN, PASSWORD, Box, served

pytestmark = pytest.mark.auth

WRONG = {"username": ADMIN, "password": "not the password"}
RIGHT = {"username": ADMIN, "password": PASSWORD}


async def login(
    c: httpx.AsyncClient, body: dict[str, str], headers: dict[str, str] | None = None
) -> httpx.Response:
    return await c.post("/api/auth/login", json=body, headers=headers)


async def test_forty_parallel_wrong_passwords_meet_the_limit(make_settings: Callable[..., Settings]) -> None:
    async with served(make_settings) as box, box.client() as c:
        answers = await asyncio.gather(*(login(c, WRONG) for _ in range(40)))
        codes = [r.status_code for r in answers]
        # Each attempt is reserved before its password is checked: the first THROTTLE_AFTER are
        # checked (and fail), every other one is refused without a check.
        assert codes.count(401) == THROTTLE_AFTER and codes.count(429) == 40 - THROTTLE_AFTER, codes
        for r in answers:
            if r.status_code == 429:
                assert 1 <= int(r.headers["retry-after"]) <= 900 and "try again" in r.json()["error"]
        # The right password waits too while the client is throttled (no oracle for the guesser).
        assert (await login(c, RIGHT)).status_code == 429


async def test_made_up_forwarded_addresses_do_not_escape_the_lockout(
    make_settings: Callable[..., Settings],
) -> None:
    async with served(make_settings) as box, box.client() as c:
        for _ in range(THROTTLE_AFTER):
            assert (await login(c, WRONG)).status_code == 401
        spoofs = [
            *({"X-Forwarded-For": f"198.51.100.{n}"} for n in range(1, 6)),
            {"X-Forwarded-For": "198.51.100.7, 127.0.0.1"},
            {"Forwarded": "for=198.51.100.8"},
            {"Forwarded": 'for="[2001:db8::8]:4711"'},
            {"X-Real-IP": "198.51.100.9"},
        ]
        for headers in spoofs:
            r = await login(c, RIGHT, headers)
            assert r.status_code == 429, (headers, r.status_code, r.text)
            assert int(r.headers["retry-after"]) >= 1


async def test_a_trusted_proxy_names_the_client(make_settings: Callable[..., Settings]) -> None:
    async with served(make_settings, LLAMAMAN_TRUSTED_PROXIES="127.0.0.1, 10.0.0.0/8") as box:
        await _forwarded_client_is_counted(box)


async def _forwarded_client_is_counted(box: Box) -> None:
    guesser = {"X-Forwarded-For": "203.0.113.5"}
    async with box.client() as c:
        for _ in range(THROTTLE_AFTER):
            assert (await login(c, WRONG, guesser)).status_code == 401
        assert (await login(c, RIGHT, guesser)).status_code == 429
        # Another client behind the same proxy signs in; the guesser cannot slip in by prepending an
        # address (the nearest untrusted address counts) or through a second trusted hop.
        assert (await login(c, RIGHT, {"X-Forwarded-For": "203.0.113.6"})).status_code == 200
        assert (await login(c, RIGHT, {"X-Forwarded-For": "192.0.2.1, 203.0.113.5"})).status_code == 429
        assert (await login(c, RIGHT, {"X-Forwarded-For": "203.0.113.5, 10.1.2.3"})).status_code == 429
        assert (await login(c, RIGHT, {"Forwarded": "for=203.0.113.5;proto=https"})).status_code == 429
        assert (await login(c, RIGHT, {"X-Real-IP": "203.0.113.5"})).status_code == 429
        assert (await login(c, RIGHT, {"Forwarded": 'for="203.0.113.7:5000"'})).status_code == 200


async def test_one_username_is_throttled_whichever_address_guesses(
    make_settings: Callable[..., Settings],
) -> None:
    """Many addresses (here: named by a trusted proxy), one account: the account's own count stops
    them, before any single address meets its limit."""
    async with served(make_settings, LLAMAMAN_TRUSTED_PROXIES="127.0.0.1") as box, box.client() as c:
        codes = [
            (await login(c, WRONG, {"X-Forwarded-For": f"198.51.100.{n}"})).status_code
            for n in range(THROTTLE_USER_AFTER + 3)
        ]
        assert codes[:THROTTLE_USER_AFTER] == [401] * THROTTLE_USER_AFTER
        assert set(codes[THROTTLE_USER_AFTER:]) == {429}
        # Other accounts are unaffected.
        other = {"username": "someone-else", "password": "whatever"}
        assert (await login(c, other, {"X-Forwarded-For": "198.51.100.200"})).status_code == 401


async def test_guessing_the_current_password_on_a_password_change_is_throttled(
    make_settings: Callable[..., Settings],
) -> None:
    async with served(make_settings) as box:
        session = await box.sign_in()
        headers = {"Cookie": f"llamaman_session={session}", "Origin": box.main}
        async with box.client(headers=headers) as c:
            body = {"current_password": "a guess", "new_password": "whatever it is"}
            codes = [
                (await c.post("/api/auth/password", json=body)).status_code
                for _ in range(THROTTLE_USER_AFTER + 1)
            ]
            assert codes[:THROTTLE_USER_AFTER] == [403] * THROTTLE_USER_AFTER and codes[-1] == 429


def _request(peer: str, headers: dict[str, str]) -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    return Request({"type": "http", "client": (peer, 1234), "headers": raw, "method": "GET", "path": "/"})


def test_client_address_reads_forwarded_headers_only_from_trusted_proxies() -> None:
    proxies = Settings(LLAMAMAN_TRUSTED_PROXIES="127.0.0.1,10.0.0.0/8,::1").trusted_proxy_networks
    xff = {"X-Forwarded-For": "203.0.113.5"}
    assert client_address(_request("127.0.0.1", xff), ()) == "127.0.0.1"  # none trusted: the default
    assert client_address(_request("192.0.2.9", xff), proxies) == "192.0.2.9"  # not a listed proxy
    assert client_address(_request("127.0.0.1", xff), proxies) == "203.0.113.5"
    assert client_address(_request("::1", xff), proxies) == "203.0.113.5"
    assert client_address(_request("::ffff:10.9.9.9", xff), proxies) == "203.0.113.5"
    assert client_address(
        _request("10.0.0.2", {"X-Forwarded-For": "1.1.1.1, 203.0.113.5, 10.0.0.3"}), proxies
    ) == ("203.0.113.5")
    assert (
        client_address(_request("127.0.0.1", {"Forwarded": 'for="[2001:db8::1]:4711"'}), proxies)
        == "2001:db8::1"
    )
    assert client_address(_request("127.0.0.1", {"X-Real-IP": "203.0.113.9"}), proxies) == "203.0.113.9"
    assert client_address(_request("127.0.0.1", {}), proxies) == "127.0.0.1"


def test_a_malformed_trusted_proxy_list_is_refused_at_start() -> None:
    with pytest.raises(ValidationError, match="not an IP address or CIDR"):
        Settings(LLAMAMAN_TRUSTED_PROXIES="127.0.0.1, localhost")
    assert Settings().trusted_proxy_networks == ()
