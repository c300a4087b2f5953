"""First-admin setup, signing out, a refused sign-in, and signing in again."""

from __future__ import annotations

import pytest
from nicegui.testing import User

from tests.ui.conftest import as_browser, sign_in, started

pytestmark = pytest.mark.nicegui_main_file("tests/ui/app_for_tests.py")


async def test_setup_then_login(user: User) -> None:
    services = await started(user)
    as_browser(user)
    await user.open("/")  # no account yet: the middleware sends the browser to setup
    await user.should_see("Create the first admin")

    user.find("Username").type("root")
    user.find("Password").type("short")
    user.find("Repeat password").type("short")
    user.find(marker="create-admin").click()
    await user.should_see("at least 8 characters", retries=30)
    assert services.auth.needs_setup()

    user.find("Password").clear().type("long enough pw")
    user.find("Repeat password").clear().type("long enough pw")
    user.find(marker="create-admin").click()
    await user.should_see("Instances", retries=30)
    await user.should_see("root")  # the user menu
    assert not services.auth.needs_setup()

    await user.open("/api/auth/logout?next=/login")  # what the menu's "Sign out" opens
    await user.should_see("Sign in")
    await user.open("/settings")  # signed out: back to the sign-in page
    await user.should_see("Use your LlamaMan account")

    user.find("Username").type("root")
    user.find("Password").type("wrong password")
    user.find(marker="sign-in").click()
    await user.should_see("Wrong username or password.", retries=30)
    user.notify.contains("Wrong username or password.")

    await sign_in(user, "root", "long enough pw")
