"""Sessions that end: signing out, a password change and removing an account each end a cookie at
once; idle and old sessions end by themselves; sessions outlive a restart. Accounts: admins and
viewers, the last admin kept. All through the real app on real uvicorn servers."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from sqlmodel import select

from llamaman.app import LlamaMan
from llamaman.auth.sessions import SESSION_COOKIE, SESSION_IDLE_S, SESSION_MAX_AGE
from llamaman.core.config import Settings
from llamaman.core.tables import UserSession
from tests.security.signin_support import ADMIN, PASSWORD, Box, cookie, served

pytestmark = pytest.mark.auth

NEW_PASSWORD = "a brand new passphrase"


@pytest.fixture
async def box(make_settings: Callable[..., Settings]) -> AsyncIterator[Box]:
    async with served(make_settings) as b:
        yield b


def browser(box: Box, session: str) -> httpx.AsyncClient:
    """A browser on LlamaMan's own page carrying ``session``."""
    return box.client(headers={**cookie(session), "Origin": box.main})


async def status(box: Box, session: str, path: str = "/api/settings") -> int:
    async with browser(box, session) as c:
        return (await c.get(path)).status_code


async def test_signing_out_ends_that_session_at_once(box: Box) -> None:
    first, second = await box.sign_in(), await box.sign_in()
    assert await status(box, first) == 200 and await status(box, second) == 200
    async with browser(box, first) as c:
        r = await c.post("/api/auth/logout")
        assert r.status_code == 200 and r.json() == {"signed_out": True}
    # The old cookie, sent again as it was, is nobody now; the other browser stays signed in.
    assert await status(box, first) == 401
    assert await status(box, second) == 200
    # A link on another site signs nobody out.
    async with browser(box, second) as c:
        r = await c.get(
            "/api/auth/logout", params={"next": "/login"}, headers={"Sec-Fetch-Site": "cross-site"}
        )
        assert r.status_code == 303 and "set-cookie" not in r.headers
    assert await status(box, second) == 200
    # The UI's sign-out link (a GET that goes on to the sign-in page) ends a session too.
    async with browser(box, second) as c:
        r = await c.get(
            "/api/auth/logout", params={"next": "/login"}, headers={"Sec-Fetch-Site": "same-origin"}
        )
        assert r.status_code == 303 and r.headers["location"] == "/login"
    assert await status(box, second) == 401


async def test_a_password_change_ends_every_session_of_the_account(box: Box) -> None:
    first, second = await box.sign_in(), await box.sign_in()
    async with browser(box, first) as c:
        r = await c.post(
            "/api/auth/password", json={"current_password": "wrong", "new_password": NEW_PASSWORD}
        )
        assert r.status_code == 403 and "current password" in r.json()["error"]
        r = await c.post("/api/auth/password", json={"current_password": PASSWORD, "new_password": "short"})
        assert r.status_code == 422 and "at least 8" in r.json()["error"]
        assert await status(box, first) == 200  # refused changes end nothing
        r = await c.post(
            "/api/auth/password", json={"current_password": PASSWORD, "new_password": NEW_PASSWORD}
        )
        assert r.status_code == 200, r.text
        fresh = r.cookies[SESSION_COOKIE]
    assert await status(box, first) == 401 and await status(box, second) == 401
    assert await status(box, fresh) == 200  # the browser that changed it carries on with a new session
    async with box.client(headers={"Origin": box.main}) as c:
        r = await c.post("/api/auth/login", json={"username": ADMIN, "password": PASSWORD})
        assert r.status_code == 401
    assert await box.sign_in(ADMIN, NEW_PASSWORD)


async def test_an_api_key_has_no_password_to_change(box: Box) -> None:
    for scope in ("admin", "inference"):
        _, key = await box.services.auth.keys.create("script", scope=scope)
        async with box.client(headers={"Authorization": f"Bearer {key}"}) as c:
            r = await c.post(
                "/api/auth/password", json={"current_password": PASSWORD, "new_password": NEW_PASSWORD}
            )
            # An admin key reaches the route, which has no password to change for a key; an inference
            # key does not even reach it.
            assert r.status_code == 403, r.text
            assert "API keys" in r.json()["error"] or scope == "inference"
    assert await box.sign_in()  # unchanged


async def test_removing_an_account_ends_its_sessions_at_once(box: Box) -> None:
    admin = await box.sign_in()
    async with browser(box, admin) as c:
        r = await c.post(
            "/api/users", json={"username": "bob", "password": "bob's password", "role": "admin"}
        )
        assert r.status_code == 201 and r.json()["role"] == "admin", r.text
    bob = await box.sign_in("bob", "bob's password")
    assert await status(box, bob) == 200
    async with browser(box, admin) as c:
        assert (await c.delete("/api/users/bob")).status_code == 200
        assert (await c.delete("/api/users/bob")).status_code == 404
        assert [u["username"] for u in (await c.get("/api/users")).json()] == [ADMIN]
    assert await status(box, bob) == 401
    async with box.client(headers={"Origin": box.main}) as c:
        r = await c.post("/api/auth/login", json={"username": "bob", "password": "bob's password"})
        assert r.status_code == 401


async def test_a_viewer_looks_but_cannot_change(box: Box) -> None:
    admin = await box.sign_in()
    async with browser(box, admin) as c:
        r = await c.post("/api/users", json={"username": "vera", "password": "vera's password"})
        assert r.status_code == 201 and r.json()["role"] == "viewer"  # the default role
    vera = await box.sign_in("vera", "vera's password")
    async with browser(box, vera) as c:
        for path in (
            "/api/instances",
            "/api/settings",
            "/api/models",
            "/api/users",
            "/api/api-keys",
            "/api/tags",
        ):
            assert (await c.get(path)).status_code == 200, path
        assert (await c.head("/api/instances")).status_code != 403
        assert (await c.get("/api/auth/me")).json()["identity"]["role"] == "viewer"
        changes = [
            ("POST", "/api/settings", {"max_models": 3}),
            ("POST", "/api/api-keys", {"name": "mine"}),
            ("POST", "/api/instances", {"model_path": "tiny-a.gguf"}),
            ("DELETE", "/api/instances/abc", None),
            ("PUT", "/api/presets/tiny-a.gguf", {"ctx_size": 512}),
            ("DELETE", "/api/presets/tiny-a.gguf", None),
            ("POST", "/api/users", {"username": "eve", "password": "eve's password", "role": "admin"}),
            ("PATCH", "/api/users/vera", {"role": "admin"}),
            ("DELETE", "/api/users/admin", None),
            ("POST", "/api/downloads", {"repo_id": "org/repo"}),
            ("POST", "/api/copy", {"source": "tiny-a", "destination": "vera-was-here"}),
            ("DELETE", "/api/delete", {"model": "tiny-a"}),
            ("POST", "/models/load", {"model": "tiny-a"}),
        ]
        for method, path, body in changes:
            r = await c.request(method, path, json=body)
            assert r.status_code == 403, (method, path, r.status_code, r.text)
            assert "viewer" in r.text
        # A viewer uses the models (the request reaches the proxy: the model name is unknown there).
        r = await c.post("/v1/chat/completions", json={"model": "nope", "messages": []})
        assert r.status_code not in (401, 403), r.text
        # ... and changes its own password.
        r = await c.post(
            "/api/auth/password", json={"current_password": "vera's password", "new_password": NEW_PASSWORD}
        )
        assert r.status_code == 200, r.text
    assert box.services.auth.user_by_name("admin") is not None
    assert box.services.runtime.current.max_models != 3 and "vera-was-here" not in box.aliases()


async def test_a_role_change_takes_effect_on_the_next_request(box: Box) -> None:
    admin = await box.sign_in()
    async with browser(box, admin) as c:
        await c.post("/api/users", json={"username": "bob", "password": "bob's password", "role": "admin"})
    bob = await box.sign_in("bob", "bob's password")
    async with browser(box, bob) as c:
        assert (await c.post("/api/api-keys", json={"name": "bob's"})).status_code == 201
        async with browser(box, admin) as a:
            r = await a.patch("/api/users/bob", json={"role": "viewer"})
            assert r.status_code == 200 and r.json()["role"] == "viewer"
        assert (await c.post("/api/api-keys", json={"name": "bob's again"})).status_code == 403


async def test_the_last_admin_cannot_be_removed_or_demoted(box: Box) -> None:
    admin = await box.sign_in()
    async with browser(box, admin) as c:
        r = await c.delete(f"/api/users/{ADMIN}")
        assert r.status_code == 409 and "last admin" in r.json()["error"]
        r = await c.patch(f"/api/users/{ADMIN}", json={"role": "viewer"})
        assert r.status_code == 409 and "last admin" in r.json()["error"]
        # Bad input is a clear 4xx, and a taken name a 409.
        assert (await c.post("/api/users", json={"username": "x", "password": "pw"})).status_code == 422
        bad_role = {"username": "x", "password": "long enough", "role": "root"}
        assert (await c.post("/api/users", json=bad_role)).status_code == 422
        taken = {"username": ADMIN, "password": "long enough"}
        assert (await c.post("/api/users", json=taken)).status_code == 409
        # With a second admin the first may go (here: itself), and its session with it.
        r = await c.post(
            "/api/users", json={"username": "second", "password": "long enough", "role": "admin"}
        )
        assert r.status_code == 201
        assert (await c.delete(f"/api/users/{ADMIN}")).status_code == 200
    assert await status(box, admin) == 401
    second = await box.sign_in("second", "long enough")
    async with browser(box, second) as c:
        assert (await c.delete("/api/users/second")).status_code == 409
        assert [u["role"] for u in (await c.get("/api/users")).json()] == ["admin"]


async def test_an_admin_sets_a_forgotten_password(box: Box) -> None:
    admin = await box.sign_in()
    async with browser(box, admin) as c:
        await c.post("/api/users", json={"username": "bob", "password": "bob's password"})
        bob = await box.sign_in("bob", "bob's password")
        assert (await c.patch("/api/users/bob", json={"password": "short"})).status_code == 422
        r = await c.patch("/api/users/bob", json={"password": "reset by admin"})
        assert r.status_code == 200
    assert await status(box, bob) == 401
    assert await box.sign_in("bob", "reset by admin")


async def test_idle_and_old_sessions_end_by_themselves(box: Box) -> None:
    idle, old = await box.sign_in(), await box.sign_in()
    records = box.services.auth._sessions  # the live records behind the cookies
    assert len(records) == 2
    by_age = sorted(records.values(), key=lambda r: r.created_at)
    by_age[0].last_seen_at = time.time() - SESSION_IDLE_S - 1
    by_age[1].expires_at = time.time() - 1
    assert await status(box, idle) == 401 and await status(box, old) == 401
    fresh = await box.sign_in()
    [record] = box.services.auth._sessions.values()
    assert record.expires_at - record.created_at == SESSION_MAX_AGE
    assert await status(box, fresh) == 200
    # An open page checks its session every few seconds; that alone is no activity.
    record.last_seen_at -= 3600
    seen = record.last_seen_at
    assert box.services.auth.session_alive(fresh) and record.last_seen_at == seen
    assert box.services.auth.session_alive(fresh, touch=True) and record.last_seen_at > seen


async def test_sessions_are_stored_hashed_and_outlive_a_restart(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    async with served(lambda **_: settings) as box:
        kept, ended = await box.sign_in(), await box.sign_in()
        async with browser(box, ended) as c:
            await c.post("/api/auth/logout")
        with box.services.db.session() as s:
            stored = [r.id for r in s.exec(select(UserSession)).all()]
        assert len(stored) == 1 and kept not in str(stored) and len(stored[0]) == 64

    again = LlamaMan(settings)
    await again.start()
    try:
        assert again.auth.user_from_session(kept) is not None
        assert again.auth.user_from_session(ended) is None
    finally:
        await again.stop()
