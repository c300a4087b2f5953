"""LlamaMan's own log over REST: the newest lines as text, as a file on request, admins only."""

from __future__ import annotations

import logging
from typing import Any

from tests.helpers import asgi, inference_headers


async def test_the_log_shows_what_llamaman_logged_and_downloads_as_a_file(box: Any) -> None:
    services = box
    logging.getLogger("llamaman.instances.supervisor").info("marker line 4711 for the log view")
    async with asgi(services, "main") as client:
        headers = await _admin(services)
        r = await client.get("/api/logs/llamaman", params={"lines": 50}, headers=headers)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        assert "INFO" in r.text and "marker line 4711 for the log view" in r.text
        assert "content-disposition" not in r.headers
        r = await client.get("/api/logs/llamaman", params={"download": "true"}, headers=headers)
        assert r.headers["content-disposition"].startswith('attachment; filename="llamaman-')
        refused = await client.get("/api/logs/llamaman", headers=await inference_headers(services))
        assert refused.status_code == 403
        r = await client.get("/api/logs/llamaman", params={"lines": 999999}, headers=headers)
        assert r.status_code in (400, 422) and "lines" in r.text


async def _admin(services: Any) -> dict[str, str]:
    _, key = await services.auth.keys.create("log-reader", scope="admin")
    return {"Authorization": f"Bearer {key}"}
