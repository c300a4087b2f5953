"""A repo id is part of every URL LlamaMan asks the Hugging Face hub for: one that carries a query,
a fragment, an extra path segment, an encoded slash, markup or a line break must be refused with a
400 before any request leaves for the hub, and queue nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from llamaman.app import LlamaMan, create_app
from llamaman.testing.fake_hub import FakeHub
from tests.helpers import admin_headers

HOSTILE = [
    "user/good?expand=everything",  # a query of the attacker's own on the hub's API
    "user/good#fragment",
    "user/good/tree",  # an extra segment: another route of the hub's API
    "user/good%2F..%2Fother",
    "user/../../api/whoami",
    "user/<script>alert(1)</script>",
    "user/good repo",
    "user/good\r\nX-Injected: 1",
    "user/good\x00",
    "user/ｇｏｏｄ",  # fullwidth letters: not the repo they look like
]


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    with FakeHub() as h:
        h.add_model("user/good", "good-Q4_K_M.gguf", "A")
        yield h


@pytest.fixture
async def dl(make_settings: Any, hub: FakeHub) -> AsyncIterator[LlamaMan]:
    svc = LlamaMan(make_settings(HF_ENDPOINT=hub.url, LLAMA_SERVER_BIN="/nonexistent/llama-server"))
    await svc.start()
    try:
        yield svc
    finally:
        await svc.stop()


async def test_a_repo_id_that_would_reshape_the_hubs_url_is_refused_before_the_hub_is_asked(
    dl: LlamaMan, hub: FakeHub
) -> None:
    headers = await admin_headers(dl)
    app = create_app(dl, manage_lifecycle=False)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t", headers=headers
    ) as c:
        for repo_id in HOSTILE:
            # A plain destination folder, so only the repo id itself can be the reason for a refusal.
            for body in (
                {"repo_id": repo_id, "dest_dir": "safe"},
                {"repo_id": repo_id, "filename": "good-Q4_K_M.gguf", "dest_dir": "safe"},
            ):
                r = await c.post("/api/downloads", json=body)
                assert r.status_code == 400, (repo_id, r.text)
                assert "invalid repo id" in r.json()["detail"], (repo_id, r.text)
    assert hub.requests == []
    assert dl.downloads.list() == []
    # The guard refuses only what is hostile: the plain id of the same repo is fetched.
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t", headers=headers
    ) as c:
        r = await c.post("/api/downloads", json={"repo_id": "user/good", "dest_dir": "safe"})
        assert r.status_code == 201, r.text
    job = await dl.downloads.wait(r.json()["id"], timeout=60)
    assert job.record.status == "completed", job.record
    assert hub.requests
