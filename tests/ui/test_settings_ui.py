"""Runtime settings: saved through the runtime service at once; invalid values are marked inline."""

from __future__ import annotations

import asyncio

import pytest
from nicegui.testing import User

from tests.ui.conftest import started

pytestmark = pytest.mark.nicegui_main_file("tests/ui/app_for_tests.py")


async def test_require_auth_toggle_and_inline_error(admin: User) -> None:
    services = await started(admin)
    await admin.open("/settings")
    before = services.runtime.current.require_auth
    admin.find("Require an API key for model endpoints").click()
    admin.find(marker="settings-save").click()
    for _ in range(40):
        if services.runtime.current.require_auth is not before:
            break
        await asyncio.sleep(0.05)
    assert services.runtime.current.require_auth is (not before)

    admin.find(marker="field-download_retries").clear().type("1000")
    admin.find(marker="settings-save").click()
    await admin.should_see("less than or equal to 100", retries=20)
    admin.notify.contains("Some settings are invalid")
    assert services.runtime.current.download_retries == 3


async def test_a_setting_from_the_environment_is_read_only_and_says_which_variable(
    admin: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    services = await started(admin)
    # The app under test is started once for the module: pin a setting the way the environment would.
    sources = {**services.runtime.sources(), "max_models": "env", "cleanup_hours": "saved"}
    monkeypatch.setattr(services.runtime, "sources", lambda: sources)
    monkeypatch.setattr(services.runtime, "pinned_by", lambda: {"max_models": "LLAMAMAN_MAX_MODELS"})
    await admin.open("/settings")
    await admin.should_see(marker="from-env-max_models")
    field = next(iter(admin.find(marker="field-max_models").elements))
    assert field.props.get("readonly") is True
    assert field.props["hint"] == "set by LLAMAMAN_MAX_MODELS (change it there)"
    assert (
        next(iter(admin.find(marker="field-cleanup_hours").elements))
        .props["hint"]
        .endswith("from: saved here")
    )
