"""The library as a control: one click loads a model (its state shows in the library), one unloads it;
launching a model that already runs asks first; a card's settings can be edited and relaunched; and
"Stop all" stops everything."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from nicegui import ui
from nicegui.testing import User

from tests.ui.conftest import started

pytestmark = pytest.mark.nicegui_main_file("tests/ui/app_for_tests.py")


async def _until(check: Callable[[], bool], what: str, tries: int = 600) -> None:
    for _ in range(tries):
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting until {what}")


async def test_load_shows_loaded_then_unload_stops_it(admin: User, llama_server_bin: str) -> None:
    services = await started(admin)
    admin.find(marker="load-tiny-a.gguf").click()
    await _until(lambda: bool(services.supervisor.list()), "an instance exists")
    m = services.supervisor.list()[0]
    assert m.record.model_path == "tiny-a.gguf"
    await _until(lambda: m.state.value == "healthy", "it is healthy")
    await admin.should_see(marker="state-tiny-a.gguf", retries=50)
    badge = next(iter(admin.find(marker="state-tiny-a.gguf").elements))
    assert badge.text == "loaded"
    admin.find(marker="unload-tiny-a.gguf").click()
    await _until(lambda: m.state.value == "stopped", "it stopped")
    await admin.should_not_see(marker="state-tiny-a.gguf", retries=50)
    await admin.should_see(marker="load-tiny-a.gguf")


async def test_relaunch_edited_settings_warn_on_a_second_copy_and_stop_all(
    admin: User, llama_server_bin: str
) -> None:
    services = await started(admin)
    admin.find(marker="load-tiny-a.gguf").click()
    await _until(lambda: bool(services.supervisor.list()), "an instance exists")
    first = services.supervisor.list()[0]
    await admin.should_see(marker=f"instance-{first.id}", retries=50)

    # Edit and relaunch from the card: the form holds its settings; Relaunch replaces it.
    admin.find(marker="edit").click()
    await admin.should_see("Relaunch stops it", retries=30)
    ctx = next(iter(admin.find(marker="field-ctx_size").elements))
    assert ctx.value == first.settings.ctx_size
    admin.find(marker="field-ctx_size").clear().type("1024")
    await asyncio.sleep(0.1)
    admin.find(marker="launch").click()
    await _until(
        lambda: (
            first.id not in services.supervisor.instances
            and any(m.settings.ctx_size == 1024 for m in services.supervisor.list())
        ),
        "the edited instance replaced the first",
    )
    await admin.should_see(marker="stop-all", retries=50)  # back on the instances page after launching

    # A second copy of a running model is launched only after saying so.
    await admin.open("/launch?model=tiny-a.gguf")
    admin.find(marker="launch").click()
    await admin.should_see("tiny-a already runs", retries=30)
    assert len(services.supervisor.list()) == 1
    admin.find(marker="confirm-launch another").click()
    await _until(lambda: len(services.supervisor.list()) == 2, "a second instance exists")

    await admin.open("/")
    await admin.should_see(marker="stop-all")
    admin.find(marker="stop-all").click()
    await admin.should_see("Stop all 2 running instance(s)?", retries=30)
    admin.find(marker="confirm-stop all").click()
    await _until(
        lambda: all(m.state.value == "stopped" for m in services.supervisor.list()), "everything stopped"
    )
    assert not next(iter(admin.find(kind=ui.button, marker="stop-all").elements)).enabled
