"""Limits that let many people share one box with keys: requests per minute that refused requests do
not use up, expiry, a daily token quota, and key bodies that refuse what they do not know."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import ollama
import openai
import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, text

from llamaman.app import LlamaMan
from llamaman.auth.apikeys import seconds_to_utc_midnight
from llamaman.core.config import Settings
from llamaman.core.db import MIGRATIONS_DIR, Database
from llamaman.core.tables import ApiKey
from llamaman.proxy.app import ProxyServer
from tests.helpers import asgi

pytestmark = pytest.mark.auth

HI = [{"role": "user", "content": "hi"}]


async def admin(services: LlamaMan) -> dict[str, str]:
    _, key = await services.auth.keys.create("ops", scope="admin")
    return {"Authorization": f"Bearer {key}"}


# ---- requests per minute ---------------------------------------------------------------------------


async def test_refused_requests_leave_the_rate_budget_untouched(box: LlamaMan) -> None:
    _, key = await box.auth.keys.create("tinies", allowed_models=["tiny-a"], rpm_limit=2)
    h = {"Authorization": f"Bearer {key}"}
    async with asgi(box) as c:
        for _ in range(4):  # each refused for its model: none of them counts
            r = await c.post("/v1/chat/completions", json={"model": "tiny-b", "messages": HI}, headers=h)
            assert r.status_code == 403
            assert (await c.post("/api/show", json={"model": "tiny-b"}, headers=h)).status_code == 403
            assert (await c.get("/upstream/tiny-b/health", headers=h)).status_code == 403
            assert (await c.get("/props", params={"model": "tiny-b"}, headers=h)).status_code == 403
            assert (await c.get("/v1/models/tiny-b", headers=h)).status_code == 404  # hidden from the key
            assert (
                await c.request("DELETE", "/api/delete", json={"model": "tiny-a"}, headers=h)
            ).status_code == 403
        assert (await c.get("/v1/models", headers=h)).status_code == 200
        assert (await c.get("/v1/models/tiny-a", headers=h)).status_code == 200
        r = await c.get("/v1/models", headers=h)
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limit_exceeded"
        assert 1 <= int(r.headers["retry-after"]) <= 60
        # The 429s themselves are not counted either: the window ends when the first request leaves it.
        for _ in range(3):
            assert (await c.get("/api/tags", headers=h)).status_code == 429


def test_a_refund_takes_back_exactly_the_refused_request() -> None:
    from llamaman.auth.apikeys import RateLimiter

    rates = RateLimiter()
    assert rates.check("k", 2, now=1.0) is None and rates.check("k", 2, now=2.0) is None
    assert rates.check("k", 2, now=3.0) is not None
    rates.refund("k", 2.0)
    rates.refund("k", 2.0)  # twice, or for a request never counted: no effect
    rates.refund("other", 1.0)
    assert rates.check("k", 2, now=3.0) is None
    assert rates.check("k", 2, now=4.0) == 57


# ---- expiry ----------------------------------------------------------------------------------------


async def test_an_expired_key_is_refused_with_401_in_every_dialect(box: LlamaMan) -> None:
    record, key = await box.auth.keys.create("temp", scope="admin", expires_at=time.time() + 3600)
    h = {"Authorization": f"Bearer {key}"}
    async with asgi(box, "main") as c:
        assert (await c.get("/api/instances", headers=h)).status_code == 200  # not yet
    await box.auth.keys.update(record.id, {"expires_at": time.time() - 1})
    async with asgi(box) as c:
        r = await c.post("/v1/chat/completions", json={"model": "tiny-a", "messages": HI}, headers=h)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert "expired on" in r.json()["error"]["message"] and "UTC" in r.json()["error"]["message"]
        assert r.headers["www-authenticate"].startswith("Bearer")
        r = await c.post("/api/chat", json={"model": "tiny-a", "messages": HI}, headers={"x-api-key": key})
        assert r.status_code == 401 and "expired" in r.json()["error"]
        r = await c.post("/v1/messages", json={"model": "tiny-a", "max_tokens": 4, "messages": HI}, headers=h)
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    async with asgi(box, "main") as c:
        r = await c.get("/api/instances", headers=h)
        assert r.status_code == 401 and "expired" in r.json()["error"]
        # With require-auth off an expired key is no credential: model endpoints answer as to anyone,
        # what needs an admin still refuses.
        await box.runtime.update({"require_auth": False})
        assert (await c.get("/v1/models", headers=h)).status_code == 200
        r = await c.request("DELETE", "/api/delete", json={"model": "tiny-a"}, headers=h)
        assert r.status_code == 401 and "expired" in r.json()["error"]
    assert (box.library.models_dir / "tiny-a.gguf").exists()


# ---- daily token quota -----------------------------------------------------------------------------


async def test_a_used_up_quota_answers_429_until_utc_midnight(box: LlamaMan) -> None:
    record, key = await box.auth.keys.create("quota", daily_token_quota=100)
    _, other = await box.auth.keys.create("other", daily_token_quota=100)
    h = {"Authorization": f"Bearer {key}"}
    box.auth.keys.record_usage(record.id, "tiny-a", 60, 39)
    async with asgi(box) as c:
        assert (await c.post("/api/show", json={"model": "tiny-a"}, headers=h)).status_code == 200  # 99 < 100
        box.auth.keys.record_usage(record.id, "tiny-a", 0, 1)
        r = await c.post("/v1/chat/completions", json={"model": "tiny-a", "messages": HI}, headers=h)
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limit_exceeded"
        assert "daily quota of 100 tokens" in r.json()["error"]["message"]
        assert abs(int(r.headers["retry-after"]) - seconds_to_utc_midnight()) <= 5
        r = await c.post("/api/chat", json={"model": "tiny-a", "messages": HI}, headers=h)
        assert r.status_code == 429 and "00:00 UTC" in r.json()["error"] and "retry-after" in r.headers
        r = await c.post("/v1/messages", json={"model": "tiny-a", "max_tokens": 4, "messages": HI}, headers=h)
        assert r.status_code == 429 and r.json()["error"]["type"] == "rate_limit_error"
        # Another key's quota is its own.
        r = await c.post("/api/show", json={"model": "tiny-a"}, headers={"x-api-key": other})
        assert r.status_code == 200
        # A new UTC day starts from zero.
        box.auth.keys._tokens_day = "2000-01-01"
        assert (await c.post("/api/show", json={"model": "tiny-a"}, headers=h)).status_code == 200


def test_seconds_to_utc_midnight() -> None:
    assert seconds_to_utc_midnight(datetime(2026, 1, 1, 23, 59, 30, tzinfo=UTC)) == 30
    assert seconds_to_utc_midnight(datetime(2026, 1, 1, 0, 0, 0, tzinfo=UTC)) == 86400
    assert seconds_to_utc_midnight(datetime(2026, 1, 1, 23, 59, 59, 999000, tzinfo=UTC)) == 1


async def test_the_days_usage_is_read_back_after_a_restart(make_settings: Callable[..., Settings]) -> None:
    services = LlamaMan(make_settings())
    await services.start()
    try:
        record, key = await services.auth.keys.create("quota", daily_token_quota=50)
        services.auth.keys.record_usage(record.id, "tiny-a", 30, 25)
    finally:
        await services.stop()  # writes the pending usage
    again = LlamaMan(make_settings())
    await again.start()
    try:
        assert again.auth.keys.tokens_today(record.id) == 55
        async with asgi(again) as c:
            r = await c.get("/api/tags", headers={"x-api-key": key})
            assert r.status_code == 429 and "daily quota of 50 tokens" in r.json()["error"]
    finally:
        await again.stop()


async def test_a_quota_stops_a_real_client_once_its_tokens_are_spent(
    services: LlamaMan, proxy: ProxyServer
) -> None:
    """The official clients against a real llama-server: the tokens a chat really used count."""
    record, key = await services.auth.keys.create("small", daily_token_quota=10)
    oai = openai.AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key=key, max_retries=0, timeout=60)
    try:
        reply = await oai.chat.completions.create(model="tiny-a", messages=HI, max_tokens=8)  # type: ignore[arg-type]
        assert (reply.choices[0].message.content or "").startswith("abcdef")
        assert services.auth.keys.tokens_today(record.id) >= 8 + 1
        with pytest.raises(openai.RateLimitError) as err:
            await oai.chat.completions.create(model="tiny-a", messages=HI, max_tokens=8)  # type: ignore[arg-type]
        assert "daily quota" in str(err.value)
        assert int(err.value.response.headers["retry-after"]) > 0
    finally:
        await oai.close()
    client = ollama.AsyncClient(host=proxy.url, headers={"Authorization": f"Bearer {key}"}, trust_env=False)
    try:
        with pytest.raises(ollama.ResponseError) as oerr:
            await client.chat("tiny-a", messages=HI, options={"num_predict": 4})
        assert oerr.value.status_code == 429 and "daily quota" in oerr.value.error
    finally:
        await client.close()


# ---- the key body ----------------------------------------------------------------------------------


async def test_key_bodies_are_validated_and_name_the_field(box: LlamaMan) -> None:
    async with asgi(box, "main") as c:
        h = await admin(box)
        before = len(box.auth.keys.by_id)
        soon = (datetime.now(UTC) + timedelta(days=1)).replace(microsecond=0)
        for body, field in (
            ({"name": "k", "expires_in": 3600}, "expires_in"),
            ({"name": "k", "expiresAt": soon.isoformat()}, "expiresAt"),
            ({"name": "k", "expires_at": "2020-01-01T00:00:00Z"}, "expires_at"),
            ({"name": "k", "expires_at": time.time() - 10}, "expires_at"),
            ({"name": "k", "expires_at": "next tuesday"}, "expires_at"),
            ({"name": "k", "daily_token_quota": -1}, "daily_token_quota"),
            ({"name": "k", "daily_token_quota": "lots"}, "daily_token_quota"),
            ({"name": "k", "rpm_limit": -5}, "rpm_limit"),
            ({"name": "k", "scope": "root"}, "scope"),
            ({"name": "   "}, "name"),
            ({"name": "k", "scope": "admin", "allowed_models": ["tiny-*"]}, "allowed_models"),
        ):
            r = await c.post("/api/api-keys", json=body, headers=h)
            assert r.status_code == 422, (body, r.text)
            assert field in r.json()["error"], (field, r.json())
        assert len(box.auth.keys.by_id) == before  # nothing half-made

        r = await c.post(
            "/api/api-keys",
            json={
                "name": "temp",
                "expires_at": soon.replace(tzinfo=None).isoformat(),
                "daily_token_quota": 5000,
            },
            headers=h,
        )  # a time without a zone is UTC
        assert r.status_code == 201, r.text
        made = r.json()
        assert made["expires_at"] == soon.timestamp() and made["daily_token_quota"] == 5000
        assert made["scope"] == "inference" and made["expired"] is False and made["tokens_today"] == 0
        r = await c.post(
            "/api/api-keys", json={"name": "unix", "expires_at": int(soon.timestamp())}, headers=h
        )
        assert r.status_code == 201 and r.json()["expires_at"] == soon.timestamp()

        # Limits can be changed afterwards, with the same checks.
        r = await c.patch(
            f"/api/api-keys/{made['id']}", json={"daily_token_quota": 0, "expires_at": None}, headers=h
        )
        assert r.status_code == 200 and r.json()["daily_token_quota"] == 0 and r.json()["expires_at"] is None
        r = await c.patch(f"/api/api-keys/{made['id']}", json={"scope": "admin"}, headers=h)
        assert r.status_code == 422 and "scope" in r.json()["error"]
        r = await c.patch(
            f"/api/api-keys/{made['id']}", json={"expires_at": "2001-01-01T00:00:00"}, headers=h
        )
        assert r.status_code == 422 and "expires_at" in r.json()["error"]
        r = await c.patch(f"/api/api-keys/{made['id']}", json={"rpm_limit": None}, headers=h)
        assert r.status_code == 422 and "rpm_limit" in r.json()["error"]
        assert (await c.patch("/api/api-keys/nope", json={"rpm_limit": 1}, headers=h)).status_code == 404
        listing = {k["id"]: k for k in (await c.get("/api/api-keys", headers=h)).json()}
        assert listing[made["id"]]["expires_at"] is None and listing[made["id"]]["rpm_limit"] == 0


async def test_limits_of_keys_from_the_environment_cannot_be_changed(
    make_settings: Callable[..., Settings],
) -> None:
    services = LlamaMan(make_settings(LLAMAMAN_ADMIN_API_KEYS="env-admin-secret-1"))
    await services.start()
    try:
        async with asgi(services, "main") as c:
            h = {"x-api-key": "env-admin-secret-1"}
            r = await c.patch("/api/api-keys/env-admin-key-1", json={"daily_token_quota": 5}, headers=h)
            assert r.status_code == 400 and "environment" in r.json()["error"]
    finally:
        await services.stop()


# ---- existing keys after the upgrade ---------------------------------------------------------------


def test_keys_made_before_scopes_become_inference_keys(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    engine = create_engine(url)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "5c1f0a9e2b7d")  # the schema before scopes
        conn.execute(
            text(
                "INSERT INTO apikey (id, name, prefix, key_hash, allowed_models, rpm_limit, revoked,"
                " created_at) VALUES ('old1', 'open-webui', 'llm-abcdefgh', 'h1', '[]', 0, 0, 1.0)"
            )
        )
    engine.dispose()
    db = Database(url)
    try:
        db.migrate()
        with db.session() as s:
            row = s.get(ApiKey, "old1")
            assert row is not None
            assert row.scope == "inference" and row.expires_at is None and row.daily_token_quota == 0
            s.add(ApiKey(name="new", prefix="llm-x", key_hash="h2"))
            s.commit()  # the columns take new rows without the migration's defaults
    finally:
        db.dispose()
