"""A new API key is shown once (with a copy button), listed by prefix only, and can be revoked."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from nicegui import ui
from nicegui.testing import User

from tests.ui.conftest import started

pytestmark = pytest.mark.nicegui_main_file("tests/ui/app_for_tests.py")


async def test_new_key_is_shown_once(admin: User) -> None:
    services = await started(admin)
    await admin.open("/keys")
    await admin.should_see("New API key")
    admin.find(marker="key-name").type("open-webui")
    admin.find(marker="key-create").click()
    await admin.should_see("shown only this once", retries=20)
    secret = next(iter(admin.find(marker="new-key").elements)).value
    assert secret and services.auth.keys.verify(secret) is not None
    admin.find("Done").click()
    assert not any(d.value for d in admin.find(kind=ui.dialog).elements)  # closed (removed once hidden)

    table = next(iter(admin.find(kind=ui.table).elements))
    rows = table.rows
    assert [r["name"] for r in rows] == ["open-webui"]
    assert secret not in str(rows) and rows[0]["prefix_shown"].rstrip("…") in secret

    await admin.open("/keys")  # a reload never shows the secret again
    await admin.should_not_see(secret)

    record = services.auth.keys.verify(secret)
    assert record is not None
    await services.auth.keys.revoke(record.id)
    await admin.open("/keys")
    table = next(iter(admin.find(kind=ui.table).elements))
    for _ in range(40):
        if table.rows:
            break
        await asyncio.sleep(0.05)
    assert [(r["name"], r["state"]) for r in table.rows] == [("open-webui", "revoked")]


async def test_a_key_gets_its_scope_expiry_and_quota_from_the_form(admin: User) -> None:
    import time

    services = await started(admin)
    await admin.open("/keys")
    await admin.should_see("New API key")
    admin.find(marker="key-name").type("ops")
    for marker, value in (("key-scope", "admin"), ("key-days", 7), ("key-quota", 5000)):
        next(iter(admin.find(marker=marker).elements)).value = value
    admin.find(marker="key-create").click()
    await admin.should_see("shown only this once", retries=20)
    secret = next(iter(admin.find(marker="new-key").elements)).value
    record = services.auth.keys.verify(secret)
    assert record is not None and record.scope == "admin" and record.daily_token_quota == 5000
    assert record.expires_at is not None and abs(record.expires_at - (time.time() + 7 * 86400)) < 120
    admin.find("Done").click()
    table = next(iter(admin.find(kind=ui.table).elements))
    [row] = table.rows
    assert row["scope"] == "admin" and row["quota"] == "0 / 5000" and row["expires"] != "never"

    # The default is an inference key without expiry or quota.
    admin.find(marker="key-name").type("open-webui")
    for marker, value in (("key-scope", "inference"), ("key-days", 0), ("key-quota", 0)):
        next(iter(admin.find(marker=marker).elements)).value = value
    admin.find(marker="key-create").click()
    made: list[Any] = []
    for _ in range(100):
        made = [r for r in services.auth.keys.by_id.values() if r.name == "open-webui"]
        if made:
            break
        await asyncio.sleep(0.05)
    [record] = made
    assert record.scope == "inference" and record.expires_at is None and record.daily_token_quota == 0


async def test_a_keys_limits_are_changed_from_its_row(admin: User) -> None:
    import time

    services = await started(admin)
    record, _ = await services.auth.keys.create("open-webui", rpm_limit=10)
    await admin.open("/keys")
    table = next(iter(admin.find(kind=ui.table).elements))
    for _ in range(40):
        if table.rows:
            break
        await asyncio.sleep(0.05)
    [row] = table.rows
    # What the row's "Change limits" button sends from the browser.
    [listener] = [lid for lid, lst in table._event_listeners.items() if lst.type == "limits"]
    table._handle_event({"listener_id": listener, "args": row})
    await admin.should_see("Limits of 'open-webui'")
    for marker, value in (("limits-days", 2), ("limits-quota", 20000), ("limits-rpm", 0)):
        next(iter(admin.find(marker=marker).elements)).value = value
    admin.find(marker="limits-save").click()
    for _ in range(100):
        changed = services.auth.keys.by_id[record.id]
        if changed.daily_token_quota:
            break
        await asyncio.sleep(0.05)
    assert changed.daily_token_quota == 20000 and changed.rpm_limit == 0
    assert changed.expires_at is not None and abs(changed.expires_at - (time.time() + 2 * 86400)) < 120
    assert changed.scope == "inference"


async def test_a_new_key_comes_with_ready_to_paste_connection_snippets(admin: User) -> None:
    await started(admin)
    await admin.open("/keys")
    admin.find(marker="key-name").type("scripts")
    admin.find(marker="key-create").click()
    await admin.should_see("shown only this once", retries=20)
    secret = next(iter(admin.find(marker="new-key").elements)).value
    openai_url = next(iter(admin.find(marker="url-openai").elements)).text
    assert openai_url.endswith("/v1")
    for title in ("Open WebUI", "curl", "Python (ollama)", "Python (openai)"):
        code = next(iter(admin.find(marker=f"snippet-{title}").elements)).content
        assert secret in code, title
    curl = next(iter(admin.find(marker="snippet-curl").elements)).content
    assert f"{openai_url}/chat/completions" in curl


async def test_enter_in_the_name_creates_the_key(admin: User) -> None:
    services = await started(admin)
    await admin.open("/keys")
    admin.find(marker="key-name").type("by-enter").trigger("keydown.enter")
    await admin.should_see("shown only this once", retries=20)
    assert [k["name"] for k in await services.auth.keys.listing()] == ["by-enter"]
