"""The launch page refuses what the launch policy refuses: the flag and the reason on the field, the
Launch button off, a notification on Launch or Save preset, and nothing launched or saved."""

from __future__ import annotations

import asyncio

import pytest
from nicegui import ui
from nicegui.testing import User

from tests.ui.conftest import started

pytestmark = pytest.mark.nicegui_main_file("tests/ui/app_for_tests.py")


def _field(user: User, name: str) -> ui.element:
    return next(iter(user.find(marker=f"field-{name}").elements))


@pytest.mark.parametrize(
    ("args", "words"),
    [
        ("--tools all", ("--tools", "tools")),
        ("--chat-template-file /etc/passwd", ("--chat-template-file", "outside the models folder")),
        ("--webui --path=/", ("--webui", "serves files")),
    ],
)
async def test_a_refused_flag_is_shown_and_nothing_runs_or_is_saved(
    admin: User, args: str, words: tuple[str, ...]
) -> None:
    services = await started(admin)
    await admin.open("/launch?model=tiny-a.gguf")
    admin.find(marker="field-extra_args").type(args)
    await asyncio.sleep(0.1)
    field = _field(admin, "extra_args")
    assert field.props.get("error") is True
    for word in words:
        assert word in field.props["error-message"], field.props["error-message"]
    assert not next(iter(admin.find(kind=ui.button, content="Launch").elements)).enabled
    admin.find("Save preset").click()
    await admin.should_see("Fix the highlighted settings first")
    assert await services.presets.get("tiny-a.gguf") is None
    assert services.supervisor.list() == []
