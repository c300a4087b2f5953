"""A download from a (local, throttled) stand-in for Hugging Face shows its progress live."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from nicegui import ui
from nicegui.testing import User

from llamaman.testing.fake_hub import FakeHub
from tests.ui.conftest import started

pytestmark = pytest.mark.nicegui_main_file("tests/ui/app_for_tests.py")


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    with FakeHub() as h:
        h.add_model("user/repo", "tiny-Q4_K_M.gguf", "A", pad_to=2_000_000)
        h.throttle_bps = 1_000_000  # about two seconds: long enough to watch it move
        monkeypatch.setenv("HF_ENDPOINT", h.url)
        yield h


async def test_download_progress_appears(hub: FakeHub, admin: User) -> None:
    services = await started(admin)
    await admin.open("/downloads")
    admin.find(marker="download-repo").type("user/repo")
    admin.find("List files").click()
    select = next(iter(admin.find(marker="download-file").elements))
    for _ in range(50):
        if select.options:
            break
        await asyncio.sleep(0.05)
    assert select.value == "tiny-Q4_K_M.gguf"
    admin.find(kind=ui.button, content="Download").click()
    for _ in range(100):
        if services.downloads.list():
            break
        await asyncio.sleep(0.05)
    job = services.downloads.list()[0]
    await admin.should_see(marker=f"download-{job.id}", retries=20)

    seen: set[float] = set()
    for _ in range(200):
        card = next(iter(admin.find(marker=f"download-{job.id}").elements))
        bars = [e for e in card.descendants() if isinstance(e, ui.linear_progress)]
        seen.add(round(bars[0].value, 2))
        if job.status == "completed":
            break
        await asyncio.sleep(0.05)
    assert job.status == "completed", job.record.error
    assert any(0 < v < 1 for v in seen), f"no intermediate progress seen: {sorted(seen)}"
    await admin.should_see("completed", retries=20)
    await admin.should_see("(100.0%)", retries=20)


async def test_a_failed_download_keeps_its_reason_on_its_row(hub: FakeHub, admin: User) -> None:
    services = await started(admin)
    await services.runtime.update({"download_retries": 0})
    hub.fail_next(50, status=500)
    job = await services.downloads.create("user/repo", "tiny-Q4_K_M.gguf")
    for _ in range(400):
        if job.status == "failed":
            break
        await asyncio.sleep(0.05)
    assert job.status == "failed"
    reason = job.view().get("error")
    assert reason
    await admin.open("/downloads")  # a page opened later still shows why, on the row itself
    card = next(iter(admin.find(marker=f"download-{job.id}").elements))
    texts = [e.text for e in card.descendants() if isinstance(e, ui.label) and e.visible]
    assert reason in texts
