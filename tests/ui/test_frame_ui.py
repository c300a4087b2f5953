"""The shared frame: a gauge per GPU, CPU and RAM bars, the llama-server in use, the theme toggle."""

from __future__ import annotations

import pytest
from nicegui import ui
from nicegui.testing import User

from tests.ui.conftest import started

pytestmark = pytest.mark.nicegui_main_file("tests/ui/app_for_tests.py")


@pytest.fixture
def fake_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLAMAMAN_UI_FAKE_GPUS", "1")


async def test_header_shows_gpus_cpu_ram_and_binary(fake_gpus: None, admin: User) -> None:
    services = await started(admin)
    await admin.open("/settings")
    # Two stand-in GPUs: name, VRAM used/total, utilization and temperature.
    await admin.should_see("NVIDIA Fake A100", retries=30)
    await admin.should_see("NVIDIA Fake RTX 4090")
    await admin.should_see("2.0 GB / 80.0 GB")
    await admin.should_see("util 35% · 45°C")
    await admin.should_see("CPU")
    await admin.should_see("RAM")
    assert len(admin.find(kind=ui.circular_progress).elements) == 2
    binary = services.supervisor.binary
    if binary is not None:
        await admin.should_see(f"llama-server {(binary.version or '').split(' (')[0]}")
    else:
        await admin.should_see("no llama-server")


async def test_theme_toggle_is_remembered(admin: User) -> None:
    await admin.should_see(marker="theme")
    admin.find(marker="theme").click()
    dark = next(iter(admin.find(kind=ui.dark_mode).elements))
    assert dark.value is True
    await admin.open("/keys")
    dark = next(iter(admin.find(kind=ui.dark_mode).elements))
    assert dark.value is True  # kept for this browser
    admin.find(marker="theme").click()
    assert dark.value is False
