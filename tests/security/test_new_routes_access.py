"""The routes this release adds hold against callers with less than they ask for: an inference key,
no key, an admin path spelled with other encodings, on the proxy port and the main app alike."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers import admin_headers, asgi, inference_headers

ROUTES = [
    ("GET", "/api/inflight"),
    ("DELETE", "/api/inflight/abc"),
    ("GET", "/api/placement"),
    ("GET", "/api/workers"),
    ("GET", "/api/nodes"),
    ("GET", "/api/peers"),
    ("POST", "/api/peers"),
    ("DELETE", "/api/peers/evil"),
    ("GET", "/api/logs/llamaman"),
    ("GET", "/openapi.json"),
]
# The same paths as a hostile client might spell them to slip past a prefix check.
VARIANTS = ["/api//inflight", "/api/%69nflight", "/API/inflight", "/api/inflight/../inflight"]
VARIANTS += ["/api//peers", "/api/%70eers", "/API/peers", "/api/x/../peers", "/api/nodes/", "/api/%6Eodes"]


@pytest.mark.parametrize("surface", ["proxy", "main"])
async def test_an_inference_key_or_no_key_cannot_list_cancel_or_read_what_admins_see(
    box: Any, surface: str
) -> None:
    services = box
    weak = await inference_headers(services)
    async with asgi(services, surface) as client:
        for method, path in ROUTES:
            r = await client.request(method, path, headers=weak)
            assert r.status_code == 403, (surface, method, path, r.status_code)
            r = await client.request(method, path)
            assert r.status_code in (401, 403), (surface, method, path, r.status_code)
        for path in VARIANTS:
            r = await client.get(path, headers=weak)
            assert r.status_code in (400, 403, 404), (surface, path, r.status_code)
            assert "items" not in r.text and "devices" not in r.text and "base_url" not in r.text
        if surface == "main":  # the REST API is served on the main app only
            # The guard is what refuses: an admin key gets through the same routes.
            strong = await admin_headers(services)
            assert (await client.get("/api/inflight", headers=strong)).status_code == 200
            assert (await client.delete("/api/inflight/abc", headers=strong)).status_code == 404
