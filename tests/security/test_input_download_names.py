"""Downloads and pulls refuse file names that could become markup, quotes or paths elsewhere: a
repo on a (fake) Hugging Face hub offers such files, and both the REST download and Ollama's
/api/pull refuse them with a 400 naming the file, writing nothing.

A repo id is part of every URL LlamaMan asks the hub for: one that carries a query, a fragment, an
extra path segment, an encoded slash, markup or a line break is refused with a 400 before any
request leaves for the hub, and queues nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from llamaman.app import LlamaMan, create_app
from llamaman.proxy.app import create_proxy_app
from llamaman.testing.fake_hub import FakeHub
from tests.helpers import admin_headers

EVIL = [
    'mmproj" :title="<script>alert(1)</script>" x=".gguf',
    "mmproj-<img src=x onerror=alert(1)>.gguf",
    "mmproj-'quoted'.gguf",
    "mmproj-back\\slash.gguf",
    "mmproj-new\nline.gguf",
    "mmproj-bell\x07.gguf",
    "mmproj-`tick`.gguf",
]

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
        for i, name in enumerate(EVIL):
            h.add_model(f"user/evil{i}", "model-Q4_K_M.gguf", "A")
            h.add_file(f"user/evil{i}", name, b"GGUF")
        h.add_file("user/dots", "sub/../../escape-Q4_K_M.gguf", b"GGUF")
        yield h


@pytest.fixture
async def dl(make_settings: Any, hub: FakeHub) -> AsyncIterator[LlamaMan]:
    svc = LlamaMan(make_settings(HF_ENDPOINT=hub.url, LLAMA_SERVER_BIN="/nonexistent/llama-server"))
    await svc.start()
    try:
        yield svc
    finally:
        await svc.stop()


def models(svc: LlamaMan) -> list[str]:
    return sorted(p.name for p in svc.settings.models_dir.rglob("*") if p.is_file())


async def test_rest_downloads_refuse_unsafe_names(dl: LlamaMan) -> None:
    before = models(dl)
    headers = await admin_headers(dl)
    app = create_app(dl, manage_lifecycle=False)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t", headers=headers
    ) as c:
        for i, name in enumerate(EVIL):
            r = await c.post("/api/downloads", json={"repo_id": f"user/evil{i}", "filename": name})
            assert r.status_code == 400, (name, r.text)
            assert "is not allowed" in r.json()["detail"]
            # The whole repo: its listing carries the bad name, so nothing is queued.
            r = await c.post("/api/downloads", json={"repo_id": f"user/evil{i}", "gguf_only": False})
            assert r.status_code in (400, 422), (name, r.text)
        for dest in ('a"b', "x/<y>", "..", "a\\b"):
            r = await c.post("/api/downloads", json={"repo_id": "user/good", "dest_dir": dest})
            assert r.status_code == 400, (dest, r.text)
        r = await c.post("/api/downloads", json={"repo_id": "user/dots", "gguf_only": False})
        assert r.status_code in (400, 404, 422), r.text
    assert dl.downloads.list() == []
    assert models(dl) == before


async def test_ollama_pull_refuses_a_repo_whose_projector_name_is_markup(dl: LlamaMan) -> None:
    app = create_proxy_app(dl)
    headers = await admin_headers(dl)  # pulling changes the box: an admin key, whatever require-auth says
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t", headers=headers
    ) as c:
        for i, name in enumerate(EVIL):
            if not name.lower().endswith(".gguf"):
                continue
            r = await c.post("/api/pull", json={"model": f"hf.co/user/evil{i}:Q4_K_M", "stream": False})
            if "mmproj" in name.rsplit("/", 1)[-1]:  # picked as the model's projector: refused
                assert r.status_code == 400, (name, r.text)
                assert "is not allowed" in r.json()["error"]
            else:  # not a projector by its base name, so never picked
                assert r.status_code == 200, (name, r.text)
    for job in dl.downloads.list():
        assert not set(EVIL) & {f.name for f in job.files}
    assert not any(n in EVIL or n.endswith('x=".gguf') for n in models(dl))


async def test_a_repo_the_hub_does_not_know_is_a_404_not_a_gateway_error(dl: LlamaMan) -> None:
    """A hub (or mirror) that answers a bare 404 means the repo is not there: the caller's 404."""
    headers = await admin_headers(dl)
    app = create_app(dl, manage_lifecycle=False)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t", headers=headers
    ) as c:
        for repo in ("then", "user/no-such-repo"):
            r = await c.post("/api/downloads", json={"repo_id": repo})
            assert r.status_code == 404 and "not found" in r.json()["detail"], (repo, r.text)
    assert dl.downloads.list() == []


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
