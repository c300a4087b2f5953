"""Accounts in the UI: an admin adds a viewer and changes its own password on the settings page; a
viewer sees the pages but its page events are refused; an ended session sends an open page to sign in."""

from __future__ import annotations

import asyncio

import pytest
from nicegui.testing import User

from pages.shell import VIEWER_REFUSAL
from tests.ui.conftest import ADMIN, PASSWORD, as_browser, sign_in, started

pytestmark = pytest.mark.nicegui_main_file("tests/ui/app_for_tests.py")


def _press(user: User, marker: str) -> None:
    """Send a click the way the browser's socket does (the simulated user calls handlers directly,
    past what guards the socket)."""
    [element] = user.find(marker=marker).elements
    listener = next(iter(element._event_listeners))
    assert user.client is not None
    user.client.handle_event({"id": element.id, "listener_id": listener, "args": []})


async def test_admin_adds_a_viewer_and_changes_its_password(admin: User) -> None:
    services = await started(admin)
    await admin.open("/settings")
    await admin.should_see("Your account")
    await admin.should_see("Users")

    admin.find(marker="add-user").click()
    admin.find(marker="new-username").type("vera")
    admin.find(marker="new-user-password").type("vera's password")
    admin.find(marker="create-user").click()
    await admin.should_see("vera added as viewer", retries=30)
    assert services.auth.user_by_name("vera") is not None and not services.auth.user_by_name("vera").is_admin

    before = list(services.auth._sessions)
    admin.find(marker="change-password").click()
    admin.find(marker="current-password").type("wrong password")
    admin.find(marker="new-password").type("a new passphrase")
    admin.find(marker="repeat-password").type("a new passphrase")
    admin.find(marker="save-password").click()
    await admin.should_see("the current password is wrong", retries=30)
    admin.find(marker="current-password").clear().type(PASSWORD)
    admin.find(marker="save-password").click()
    await admin.should_see("Runtime settings", retries=30)  # back on the settings page, signed in anew
    for _ in range(40):
        if not set(before) & set(services.auth._sessions):
            break
        await asyncio.sleep(0.05)
    assert not set(before) & set(services.auth._sessions)  # the old sessions ended
    assert await services.auth.verify_login(ADMIN, "a new passphrase", "10.9.9.9") is not None


async def test_a_viewer_sees_but_its_changes_are_refused(admin_env: None, user: User) -> None:
    services = await started(user)
    await services.auth.create_user("vera", "vera's password", "viewer")
    as_browser(user)
    await sign_in(user, "vera", "vera's password")
    await user.open("/settings")
    await user.should_see(VIEWER_REFUSAL)
    [save] = user.find(marker="settings-save").elements
    assert not save.enabled
    await user.should_not_see(marker="add-user")
    await user.should_see(marker="change-password")  # a viewer's own password is its own business

    await user.open("/keys")
    user.find(marker="key-name").type("vera's key")
    _press(user, "key-create")
    await user.should_see(VIEWER_REFUSAL, retries=20)
    assert "vera's key" not in str(await services.auth.keys.listing())


async def test_an_ended_session_sends_the_open_page_to_sign_in(admin: User) -> None:
    services = await started(admin)
    await admin.open("/keys")
    admin.find(marker="key-name").type("after sign-out")
    for user in services.auth.users():
        assert user.id is not None
        services.auth._drop_sessions(user.id)  # as a sign-out elsewhere or a password change does
    _press(admin, "key-create")
    await admin.should_see("Sign in", retries=30)
    assert "after sign-out" not in str(await services.auth.keys.listing())


async def test_a_role_change_reaches_an_open_page(admin_env: None, user: User) -> None:
    services = await started(user)
    await services.auth.create_user("bob", "bob's password", "admin")
    as_browser(user)
    await sign_in(user, "bob", "bob's password")
    await user.open("/keys")
    await services.auth.set_role("bob", "viewer")  # while bob's page is open
    user.find(marker="key-name").type("bob's key")
    _press(user, "key-create")
    await user.should_see(VIEWER_REFUSAL, retries=20)
    assert "bob's key" not in str(await services.auth.keys.listing())
