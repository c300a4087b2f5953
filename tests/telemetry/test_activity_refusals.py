"""Refused model requests land in the activity log with the reason their client got, and every
caller's name for one model is logged as one name."""

from __future__ import annotations

import csv
import io
from typing import Any

import httpx
import pytest

from llamaman.core.exchange import Exchange
from llamaman.proxy.app import create_proxy_app
from llamaman.telemetry.activity_query import model_label
from tests.helpers import admin_headers, api_client

HI = [{"role": "user", "content": "hi"}]


def proxy_client(services: Any) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=create_proxy_app(services))
    return httpx.AsyncClient(transport=transport, base_url="http://llamaman.test")


@pytest.mark.auth
async def test_refusals_are_logged_with_their_reason_and_filter_by_key_and_status(box: Any) -> None:
    _, key = await box.auth.keys.create("client", rpm_limit=1)
    bearer = {"Authorization": f"Bearer {key}"}
    async with proxy_client(box) as proxy:
        anonymous = await proxy.post("/v1/chat/completions", json={"model": "tiny-a", "messages": HI})
        assert anonymous.status_code == 401
        not_json = await proxy.post(
            "/api/chat", content=b"{}", headers={**bearer, "Content-Type": "text/plain"}
        )
        assert not_json.status_code == 415
        missing = await proxy.post("/api/chat", json={"model": "nope", "messages": HI}, headers=bearer)
        assert missing.status_code == 404
        # Refusals above gave their place back; this one counts (no model named), the next is over.
        unnamed = await proxy.post("/v1/chat/completions", json={"messages": HI}, headers=bearer)
        assert unnamed.status_code == 400
        throttled = await proxy.post("/v1/chat/completions", json={"model": "nope"}, headers=bearer)
        assert throttled.status_code == 429
        # An answered request is no refusal: nothing to log here (the routes log what they serve).
        assert (await proxy.get("/api/version", headers=await admin_headers(box))).status_code == 200

    async with api_client(box) as api:
        rows = (await api.get("/api/activity", params={"status": "error"})).json()["items"]
        got = [(r["status"], r["endpoint"], r["model"], r["key_name"]) for r in rows]
        # Credentials, rate and content type are checked before the body is read: those refusals
        # name no model.
        assert got == [
            (429, "/v1/chat/completions", "", "client"),
            (400, "/v1/chat/completions", "", "client"),
            (404, "/api/chat", "nope", "client"),
            (415, "/api/chat", "", "client"),
            (401, "/v1/chat/completions", "", None),
        ]
        reasons = [r["error"] for r in rows]
        assert "limited to 1 requests per minute" in reasons[0]
        assert "model" in reasons[1]
        assert "'nope' not found" in reasons[2]
        assert "must be JSON" in reasons[3]
        assert "an API key is required" in reasons[4]

        mine = (await api.get("/api/activity", params={"key_name": "client", "status": "4xx"})).json()
        assert mine["total"] == 4
        exported = (await api.get("/api/activity.csv", params={"status": "401"})).text
        [row] = list(csv.DictReader(io.StringIO(exported)))
        assert row["status"] == "401" and row["error"].startswith("an API key is required")


async def test_a_file_name_and_a_model_name_are_logged_as_one_model(box: Any) -> None:
    assert model_label("tiny-a.gguf") == model_label("tiny-a:latest") == model_label("tiny-a") == "tiny-a"
    assert model_label("embed/tiny-embed.GGUF") == "embed/tiny-embed"
    for name, endpoint in (("tiny-a.gguf", "/v1/chat/completions (playground)"), ("tiny-a", "/api/chat")):
        ex = Exchange(name, endpoint)
        ex.status = 200
        box.relay.record(ex)
    async with api_client(box) as api:
        summary = (await api.get("/api/activity/summary")).json()["models"]
        assert [(m["model"], m["requests"]) for m in summary] == [("tiny-a", 2)]
        by_file = (await api.get("/api/activity", params={"model": "tiny-a.gguf"})).json()
        assert by_file["total"] == 2
