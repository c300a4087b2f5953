"""The API docs the README promises, on an app built the way NiceGUI builds the main port's."""

from __future__ import annotations

from typing import Any

import httpx
from fastapi import FastAPI

from llamaman.app import install
from tests.helpers import admin_headers, inference_headers


def main_port_app(services: Any) -> FastAPI:
    # NiceGUI's app starts with every documentation URL switched off.
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    install(app, services)
    return app


async def test_signed_in_admins_read_the_schema_and_the_docs_pages(box: Any) -> None:
    app = main_port_app(box)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://llamaman.test") as client:
        admin = await admin_headers(box)
        schema = await client.get("/openapi.json", headers=admin)
        assert schema.status_code == 200
        paths = schema.json()["paths"]
        assert "/api/downloads" in paths and "/api/chat" in paths
        for page in ("/docs", "/redoc"):
            r = await client.get(page, headers=admin)
            assert r.status_code == 200 and "/openapi.json" in r.text, page
        assert sum(getattr(r, "path", None) == "/docs" for r in app.router.routes) == 1

        # They reveal the box: nobody without credentials, and no inference key.
        assert (await client.get("/openapi.json")).status_code == 401
        inference = await inference_headers(box)
        assert (await client.get("/docs", headers=inference)).status_code == 403


async def test_an_app_that_serves_docs_already_keeps_its_own(box: Any) -> None:
    app = FastAPI()
    install(app, box)
    assert [getattr(r, "path", None) for r in app.router.routes].count("/openapi.json") == 1
