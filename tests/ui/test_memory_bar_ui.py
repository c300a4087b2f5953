"""The Instances page shows memory per device against its limit, and each resident model's share."""

from __future__ import annotations

import pytest
from nicegui import ui
from nicegui.testing import User

from tests.ui.conftest import started

pytestmark = pytest.mark.nicegui_main_file("tests/ui/app_for_tests.py")


async def test_instances_page_shows_host_memory_and_the_resident_model(admin: User) -> None:
    services = await started(admin)
    await admin.should_see("system RAM:")
    labels = [str(e.props.get("aria-label", "")) for e in admin.find(ui.linear_progress).elements]
    assert any(label.startswith("system RAM:") and "limit used by models" in label for label in labels)
    lease = await services.router.acquire("tiny-a")
    lease.release()
    await admin.open("/")
    await admin.should_see("system RAM:")
    shares = [
        e for e in admin.find(ui.element).elements if str(e.props.get("aria-label", "")).startswith("tiny-a:")
    ]
    assert shares, "no share for the resident model"
