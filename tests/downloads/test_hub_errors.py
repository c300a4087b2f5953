"""A hub that cannot be reached: every way in answers with a reason a person can act on, and the
failed download keeps that reason on its row."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable

import httpx
import ollama
import pytest

from llamaman.app import LlamaMan
from llamaman.core.config import Settings
from llamaman.downloads import hub
from llamaman.downloads.hub import RemoteFile, RepoListing, TransientError
from llamaman.proxy.app import create_proxy_app
from llamaman.testing.fake_hub import FakeHub
from tests.downloads.conftest import finished, start_services
from tests.helpers import admin_headers, api_client

OFFLINE = "http://127.0.0.1:9"  # the discard port: nothing listens, the connection is refused
REASON = f"cannot reach the Hugging Face hub at {OFFLINE}"


@pytest.fixture
async def offline(make_settings: Callable[..., Settings]) -> AsyncIterator[LlamaMan]:
    svc = await start_services(make_settings(HF_ENDPOINT=OFFLINE))
    try:
        yield svc
    finally:
        await svc.stop()


def no_tracebacks(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.exc_info is not None or r.levelno >= logging.ERROR]


async def test_a_download_while_offline_says_why_and_keeps_the_reason_on_its_row(
    offline: LlamaMan, caplog: pytest.LogCaptureFixture
) -> None:
    async with api_client(offline) as api:
        r = await api.post("/api/downloads", json={"repo_id": "user/repo", "filename": "m.gguf"})
        assert r.status_code == 502, r.text
        reason = r.json()["error"]
        assert reason.startswith(REASON) and "check the network or HF_ENDPOINT" in reason

        rows = (await api.get("/api/downloads")).json()
        assert [(d["repo_id"], d["filename"], d["status"]) for d in rows] == [
            ("user/repo", "m.gguf", "failed")
        ]
        assert rows[0]["error"] == reason

        # It failed before any file was chosen: resuming cannot help, starting again can.
        again = await api.post(f"/api/downloads/{rows[0]['id']}/resume")
        assert again.status_code == 409 and "start it again" in again.json()["error"]

        # A malformed request was never attempted: no row for it.
        bad = await api.post("/api/downloads", json={"repo_id": "not a repo"})
        assert bad.status_code == 400
        assert len((await api.get("/api/downloads")).json()) == 1
    assert no_tracebacks(caplog) == []


async def test_ollama_pull_while_offline_fails_with_the_reason_streamed_or_not(
    offline: LlamaMan, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_proxy_app(offline)
    headers = await admin_headers(offline)  # a pull changes the models on the box
    client = ollama.AsyncClient(
        host="http://llamaman.test", transport=httpx.ASGITransport(app), headers=headers
    )
    for stream in (True, False):
        with pytest.raises(ollama.ResponseError) as err:
            if stream:
                async for _ in await client.pull("hf.co/user/repo:Q4_K_M", stream=True):
                    pass
            else:
                await client.pull("hf.co/user/repo:Q4_K_M", stream=False)
        assert err.value.status_code == 502 and err.value.error.startswith(REASON)
    failed = [j.view() for j in offline.downloads.list()]
    assert [(d["alias"], d["status"]) for d in failed] == [("hf.co/user/repo:Q4_K_M", "failed")] * 2
    assert all(d["error"].startswith(REASON) for d in failed)
    assert no_tracebacks(caplog) == []


async def test_the_hub_vanishing_after_the_listing_fails_the_download_after_its_retries(
    offline: LlamaMan, caplog: pytest.LogCaptureFixture
) -> None:
    listing = RepoListing("user/repo", "0" * 40, [RemoteFile("tiny-Q4_K_M.gguf", 1000)])
    job = await offline.downloads.create("user/repo", listing=listing)
    done = await finished(offline, job)
    assert done.status == "failed"
    error = done.record.error or ""
    assert REASON in error and "gave up after" in error
    assert done.record.attempts == offline.runtime.current.download_retries + 1
    assert no_tracebacks(caplog) == []


@pytest.mark.parametrize("kind", hub.transport_errors(), ids=lambda k: f"{k.__module__}.{k.__name__}")
def test_every_installed_http_stack_s_connection_errors_mean_unreachable(kind: type[BaseException]) -> None:
    err = hub._hub_error(kind("Connection refused"), "user/repo", OFFLINE)  # type: ignore[arg-type]
    assert isinstance(err, TransientError) and str(err).startswith(REASON)


def test_offline_mode_names_the_switch() -> None:
    offline_mode = pytest.importorskip("huggingface_hub.errors").OfflineModeIsEnabled
    err = hub._hub_error(offline_mode("offline"), "user/repo", OFFLINE)
    assert isinstance(err, hub.DownloadUpstreamFailed) and "HF_HUB_OFFLINE" in err.message


async def test_a_pull_whose_download_fails_answers_with_the_failure_s_kind_not_500(
    dl: LlamaMan, hub: FakeHub
) -> None:
    hub.fail_next(50, 503)  # every file GET: the download gives up after its retries
    app = create_proxy_app(dl)
    client = ollama.AsyncClient(
        host="http://llamaman.test", transport=httpx.ASGITransport(app), headers=await admin_headers(dl)
    )
    with pytest.raises(ollama.ResponseError) as err:
        await client.pull("hf.co/user/repo:Q4_K_M", stream=False)
    assert err.value.status_code == 502
    assert "HTTP 503" in err.value.error and "gave up after" in err.value.error
