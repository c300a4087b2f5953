"""Accounts, sessions, sign-in throttling, stored hashes, the environment bootstrap and log redaction,
through the real REST routes of the main app."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from sqlmodel import select

from llamaman.app import LlamaMan
from llamaman.auth.sessions import SESSION_COOKIE
from llamaman.core.config import Settings
from llamaman.core.redact import RedactingFilter, install_log_redaction, redact
from llamaman.core.tables import ApiKey, User

pytestmark = pytest.mark.auth

PASSWORD = "correct horse battery"


def client(
    services: LlamaMan, ip: str = "10.0.0.1", base_url: str = "http://llamaman.test"
) -> httpx.AsyncClient:
    from llamaman.app import create_app

    transport = httpx.ASGITransport(app=create_app(services, manage_lifecycle=False), client=(ip, 40000))
    # As a browser on the UI's own page: changes made with the session cookie need a same-origin Origin.
    return httpx.AsyncClient(transport=transport, base_url=base_url, headers={"Origin": base_url})


def rows(services: LlamaMan, table: Any) -> list[Any]:
    with services.db.session() as s:
        return list(s.exec(select(table)).all())


async def test_setup_makes_one_admin_then_refuses(box: LlamaMan) -> None:
    async with client(box) as c:
        assert (await c.get("/api/instances")).status_code == 401
        r = await c.post("/api/auth/setup", json={"username": "admin", "password": "short"})
        assert r.status_code == 422
        r = await c.post("/api/auth/setup", json={"username": "admin", "password": PASSWORD})
        assert r.status_code == 201, r.text
        cookie = r.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=lax" in cookie and "secure" not in cookie
        assert (await c.get("/api/instances")).status_code == 200  # signed in by the setup
        me = (await c.get("/api/auth/me")).json()["identity"]
        assert me["kind"] == "user" and me["user"] == "admin"

        r = await c.post("/api/auth/setup", json={"username": "second", "password": PASSWORD})
        assert r.status_code == 403 and "set up already" in r.json()["error"]
    assert [u.username for u in rows(box, User)] == ["admin"]

    [user] = rows(box, User)
    assert PASSWORD not in user.password_hash and user.password_hash.startswith("$argon2id$")


async def test_login_logout_and_cookie_flags(box: LlamaMan) -> None:
    await box.auth.create_first_admin("admin", PASSWORD)
    async with client(box) as c:
        r = await c.post("/api/auth/login", json={"username": "admin", "password": "wrong password"})
        assert r.status_code == 401 and SESSION_COOKIE not in r.headers.get("set-cookie", "")
        r = await c.post("/api/auth/login", json={"username": "admin", "password": PASSWORD})
        assert r.status_code == 200 and r.json()["user"]["username"] == "admin"
        assert (await c.get("/api/settings")).status_code == 200
        old = c.cookies[SESSION_COOKIE]
        r = await c.post("/api/auth/logout")
        assert r.status_code == 200 and 'llamaman_session=""' in r.headers["set-cookie"]
        assert (await c.get("/api/settings")).status_code == 401
        c.cookies.set(SESSION_COOKIE, old)  # signing out ended the session itself, not just the cookie
        assert (await c.get("/api/settings")).status_code == 401

        # A tampered cookie is nobody.
        token = await box.auth.new_session(box.auth.user_by_name("admin"))  # type: ignore[arg-type]
        c.cookies.set(SESSION_COOKIE, token[:-2] + "xx")
        assert (await c.get("/api/settings")).status_code == 401

    # Secure when the browser talks HTTPS, directly or through a TLS-terminating proxy.
    login = {"username": "admin", "password": PASSWORD}
    for base, headers in (("https://t", {}), ("http://t", {"X-Forwarded-Proto": "https"})):
        async with client(box, base_url=base) as c:
            r = await c.post("/api/auth/login", json=login, headers=headers)
            assert r.status_code == 200 and "secure" in r.headers["set-cookie"].lower()


async def test_repeated_failed_logins_are_throttled_per_client(box: LlamaMan) -> None:
    await box.auth.create_first_admin("admin", PASSWORD)
    statuses = []
    async with client(box, ip="10.0.0.66") as c:
        for _ in range(20):
            r = await c.post("/api/auth/login", json={"username": "admin", "password": "guess"})
            statuses.append(r.status_code)
        assert statuses[:5] == [401] * 5 and set(statuses[5:]) == {429}
        assert 1 <= int(r.headers["retry-after"]) <= 900
        # Even the right password waits while the client is throttled (no oracle for the guesser).
        r = await c.post("/api/auth/login", json={"username": "admin", "password": PASSWORD})
        assert r.status_code == 429
    async with client(box, ip="10.0.0.7") as other:
        r = await other.post("/api/auth/login", json={"username": "admin", "password": PASSWORD})
        assert r.status_code == 200


def test_backoff_doubles_and_a_success_forgets() -> None:
    from llamaman.auth.clients import LoginThrottle

    t = LoginThrottle()
    for _ in range(5):
        t.failed("ip", now=100.0)
    assert t.retry_after("ip", now=100.0) == 30
    t.failed("ip", now=131.0)
    assert t.retry_after("ip", now=131.0) == 60
    t.succeeded("ip")
    assert t.retry_after("ip", now=131.0) is None


async def test_one_time_ticket_sets_the_cookie_for_the_pages(box: LlamaMan) -> None:
    user = await box.auth.create_first_admin("admin", PASSWORD)
    async with client(box) as c:
        url = box.auth.session_url(user, next="/instances")
        r = await c.get(url)
        assert r.status_code == 303 and r.headers["location"] == "/instances"
        assert SESSION_COOKIE in r.headers["set-cookie"]
        assert (await c.get("/api/instances")).status_code == 200
        c.cookies.clear()
        r = await c.get(url)  # used up
        assert r.status_code == 303 and r.headers["location"] == "/login" and "set-cookie" not in r.headers
        # Never a redirect to another site.
        r = await c.get(box.auth.session_url(user, next="//evil.example/"))
        assert r.headers["location"] == "/"


async def test_keys_are_stored_hashed_listed_without_secret_and_revocable(box: LlamaMan) -> None:
    await box.auth.create_first_admin("admin", PASSWORD)
    async with client(box) as c:
        await c.post("/api/auth/login", json={"username": "admin", "password": PASSWORD})
        new = {"name": "open-webui", "allowed_models": ["tiny-*"], "rpm_limit": 30}
        r = await c.post("/api/api-keys", json=new)
        assert r.status_code == 201, r.text
        created = r.json()
        key = created["key"]
        assert key.startswith("llm-") and len(key) >= 4 + 32
        listing = (await c.get("/api/api-keys")).json()
        assert key not in str(listing)
        [shown] = [k for k in listing if k["id"] == created["id"]]
        assert shown["prefix"] == key[:12]
        assert shown["allowed_models"] == ["tiny-*"] and shown["rpm_limit"] == 30
        assert shown["revoked"] is False and shown["usage"]["requests"] == 0

    [row] = rows(box, ApiKey)
    assert row.key_hash != key and key not in row.key_hash and key not in str(row.model_dump())
    assert row.key_hash == hashlib.sha256(key.encode()).hexdigest()

    async with client(box) as c:
        unrestricted = (await box.auth.keys.create("admin-key", scope="admin"))[1]
        as_key = {"Authorization": f"Bearer {unrestricted}"}
        me = (await c.get("/api/auth/me", headers=as_key)).json()["identity"]
        assert me["kind"] == "key" and me["name"] == "admin-key"
        # A key limited to some models cannot manage (it could mint itself an unrestricted key).
        r = await c.get("/api/api-keys", headers={"x-api-key": key})
        assert r.status_code == 403
        assert (await c.delete(f"/api/api-keys/{created['id']}", headers=as_key)).status_code == 200
        r = await c.get("/api/instances", headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 401 and "revoked" in r.json()["error"]
        assert (await c.delete("/api/api-keys/nope", headers=as_key)).status_code == 404
        listing = (await c.get("/api/api-keys", headers=as_key)).json()
        assert {k["name"]: k["revoked"] for k in listing} == {"open-webui": True, "admin-key": False}
        assert next(k for k in listing if k["name"] == "admin-key")["last_used_at"] is not None
    assert rows(box, ApiKey)[0].revoked


async def test_environment_creates_the_admin_and_its_keys_work(
    make_settings: Callable[..., Settings],
) -> None:
    env = {"LLAMAMAN_ADMIN_USER": "root", "LLAMAMAN_ADMIN_PASSWORD": "from-the-env",
           "LLAMAMAN_API_KEYS": "first-env-key-123, second-env-key-456",
           "LLAMAMAN_ADMIN_API_KEYS": "second-env-key-456"}  # fmt: skip
    services = LlamaMan(make_settings(**env))
    await services.start()
    try:
        assert not services.auth.needs_setup()
        async with client(services) as c:
            r = await c.post("/api/auth/login", json={"username": "root", "password": "from-the-env"})
            assert r.status_code == 200
            c.cookies.clear()
            # LLAMAMAN_API_KEYS are inference keys; one also in LLAMAMAN_ADMIN_API_KEYS is an admin key.
            for key, status in (("first-env-key-123", 403), ("second-env-key-456", 200)):
                r = await c.get("/api/instances", headers={"Authorization": f"Bearer {key}"})
                assert r.status_code == status
                r = await c.get("/v1/models", headers={"Authorization": f"Bearer {key}"})
                assert r.status_code == 200
            headers = {"x-api-key": "second-env-key-456"}
            me = (await c.get("/api/auth/me", headers=headers)).json()["identity"]
            assert me["name"] == "env-admin-key-1" and me["scope"] == "admin"
            listing = (await c.get("/api/api-keys", headers=headers)).json()
            shown = [(k["name"], k["source"], k["scope"]) for k in listing]
            assert shown == [("env-key-1", "env", "inference"), ("env-admin-key-1", "env", "admin")]
            assert (await c.delete("/api/api-keys/env-key-1", headers=headers)).status_code == 400
            # The settings page shows neither the password nor the keys.
            shown = (await c.get("/api/settings", headers=headers)).text
            assert "from-the-env" not in shown and "first-env-key-123" not in shown
        [user] = rows(services, User)
        assert "from-the-env" not in user.password_hash
    finally:
        await services.stop()

    # Only when no account exists: a later start with another password changes nothing.
    again = LlamaMan(make_settings(**{**env, "LLAMAMAN_ADMIN_PASSWORD": "changed-in-env"}))
    await again.start()
    try:
        assert await again.auth.verify_login("root", "from-the-env", "10.1.1.1") is not None
        assert await again.auth.verify_login("root", "changed-in-env", "10.1.1.1") is None
    finally:
        await again.stop()


def test_redaction_masks_keys_tokens_and_credentials() -> None:
    key = "llm-Ab3dEfGh1jKlMn0pQrStUvWxYz_-0123456789abc"
    text = (
        f"key={key} hf=hf_abcdefghijKLMNOP1234 Authorization: Bearer sk-live-9999 "
        "headers={'x-api-key': 'anthropic-style-secret'} Authorization: Basic dXNlcjpwYXNz"
    )
    masked = redact(text)
    for secret in (key, "hf_abcdefghijKLMNOP1234", "sk-live-9999", "anthropic-style-secret", "dXNlcjpwYXNz"):
        assert secret not in masked
    assert "llm-***" in masked and "hf_***" in masked
    prose = "basic authentication failed for bearer tokens"
    assert redact(prose) == prose


def test_every_log_record_is_masked(caplog: pytest.LogCaptureFixture) -> None:
    install_log_redaction(["plain-env-secret"])
    log = logging.getLogger("llamaman.test.redaction")
    with caplog.at_level(logging.INFO, logger="llamaman.test.redaction"):
        log.info("request with %s and %s", "Bearer llm-ZZZZZZZZZZZZ1234", "plain-env-secret")
        try:
            raise RuntimeError("token hf_secretsecret99 rejected")
        except RuntimeError:
            log.exception("download failed")
    text = caplog.text
    assert "llm-ZZZZ" not in text and "plain-env-secret" not in text and "hf_secretsecret99" not in text
    assert "request with Bearer llm-*** and ***" in text and "hf_***" in text

    record = logging.LogRecord("x", logging.INFO, __file__, 1, "auth %s", ("Bearer abcdef123456",), None)
    assert RedactingFilter().filter(record) and record.getMessage() == "auth Bearer ***"
