"""UI tests with NiceGUI's simulated user: pages run in-process against real services."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from nicegui import app

# The fixtures and hooks of NiceGUI's user plugin, imported here rather than named in the root
# conftest's pytest_plugins so only these tests load them.
from nicegui.testing import User, user_plugin
from nicegui.testing.general_fixtures import pytest_configure  # noqa: F401

user = user_plugin.user
create_user = user_plugin.create_user

ADMIN, PASSWORD = "admin", "correct horse battery"


@pytest.fixture
def admin_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """An admin created at start from the environment, as containers do it."""
    monkeypatch.setenv("LLAMAMAN_ADMIN_USER", ADMIN)
    monkeypatch.setenv("LLAMAMAN_ADMIN_PASSWORD", PASSWORD)


async def started(user: User) -> Any:
    """The app's services once started (NiceGUI runs async startup handlers in the background)."""
    services = app.state.services
    for _ in range(600):
        if services.started:
            return services
        await asyncio.sleep(0.05)
    raise AssertionError("the services did not start within 30 s")


def as_browser(user: User) -> User:
    # The auth middleware sends browsers (which accept HTML) to sign in instead of answering 401.
    user.http_client.headers["accept"] = "text/html,application/xhtml+xml"
    return user


async def sign_in(user: User, username: str = ADMIN, password: str = PASSWORD) -> None:
    await user.open("/login")
    user.find("Username").type(username)
    user.find("Password").type(password)
    user.find(marker="sign-in").click()
    await user.should_see("Instances", retries=30)


@pytest.fixture
async def admin(admin_env: None, user: User) -> AsyncIterator[User]:
    """A simulated browser signed in as the admin."""
    await started(user)
    as_browser(user)
    await sign_in(user)
    yield user
