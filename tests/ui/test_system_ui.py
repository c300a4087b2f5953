"""The System page: LlamaMan's own log live and as a file, aliases added and removed, a backup taken and
restored (a wrong file refused with the reason), and a benchmark started from the form."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable

import pytest
from nicegui import ui
from nicegui.testing import User

from tests.ui.conftest import started

pytestmark = pytest.mark.nicegui_main_file("tests/ui/app_for_tests.py")


async def _until(check: Callable[[], bool], what: str, tries: int = 400) -> None:
    for _ in range(tries):
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting until {what}")


@pytest.fixture
def downloads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[bytes, str]]:
    got: list[tuple[bytes, str]] = []
    monkeypatch.setattr(ui.download, "content", lambda data, name, media_type="": got.append((data, name)))
    return got


async def test_log_aliases_and_backup(admin: User, downloads: list[tuple[bytes, str]]) -> None:
    services = await started(admin)
    await admin.open("/system")
    logging.getLogger("llamaman.services").warning("a line the System page shows 0815")
    await admin.should_see("a line the System page shows 0815", retries=60)  # the 2-second poll
    admin.find(marker="app-log-download").click()
    await _until(lambda: bool(downloads), "the log was offered as a file")
    assert b"a line the System page shows 0815" in downloads[-1][0] and downloads[-1][1].endswith(".log")

    admin.find(marker="alias-name").type("my-chat")
    next(iter(admin.find(marker="alias-target").elements)).value = "tiny-a.gguf"
    admin.find(marker="alias-add").click()
    await _until(lambda: services.aliases.aliases.get("my-chat") == "tiny-a.gguf", "the alias is saved")
    await admin.should_see("→ tiny-a.gguf")

    admin.find(marker="backup").click()
    await _until(lambda: downloads[-1][1].endswith(".json"), "the backup was offered")
    backup = json.loads(downloads[-1][0])
    assert "my-chat" in json.dumps(backup)

    admin.find(marker="alias-remove-my-chat").click()
    await _until(lambda: "my-chat" not in services.aliases.aliases, "the alias is removed")
    await admin.should_not_see("→ tiny-a.gguf")

    admin.find(marker="restore-text").type("{not json")
    admin.find(marker="restore").click()
    await admin.should_see("Not a JSON file", retries=20)
    admin.find(marker="restore-text").clear().type(json.dumps(backup))
    admin.find(marker="restore").click()
    await _until(lambda: services.aliases.aliases.get("my-chat") == "tiny-a.gguf", "the backup restored it")
    await admin.should_see("Restored:", retries=20)


async def test_benchmark_form_refuses_bad_values_in_words(admin: User) -> None:
    services = await started(admin)
    await admin.open("/system")
    next(iter(admin.find(marker="bench-model").elements)).value = None
    admin.find(marker="bench-run").click()
    await _until(
        lambda: any(m.startswith("model:") for m in admin.notify.messages), "the form names the bad field"
    )
    assert not await asyncio.to_thread(services.telemetry.benchmarks.list, 5)
