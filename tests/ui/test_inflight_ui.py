"""The in-flight list on the instances page: requests appear, age, and an admin cancels one."""

from __future__ import annotations

import asyncio

import pytest
from nicegui.testing import User

from llamaman.core.exchange import Exchange
from tests.ui.conftest import started

pytestmark = pytest.mark.nicegui_main_file("tests/ui/app_for_tests.py")


async def test_a_request_in_flight_is_listed_and_its_cancel_button_stops_it(admin: User) -> None:
    services = await started(admin)
    await admin.open("/")
    await admin.should_see("No request is queued or running.")

    ex = Exchange("tiny-a", "/v1/chat/completions", stream=True)
    stopped: list[str] = []
    ex.on_abort(lambda: stopped.append(ex.cancelled or ""))
    services.relay.inflight.running(ex)
    await admin.should_see(marker=f"inflight-{ex.id}", retries=40)
    await admin.should_see("1 running, 0 queued")
    button = next(iter(admin.find(marker=f"cancel-{ex.id}").elements))
    assert button.props["aria-label"] == f"Cancel request {ex.id}"

    admin.find(marker=f"cancel-{ex.id}").click()
    for _ in range(40):
        if stopped:
            break
        await asyncio.sleep(0.05)
    assert stopped == ["cancelled by an administrator"]
    admin.notify.contains(f"Cancelled request {ex.id}")
    services.relay.record(ex)  # what the relay does once the request has ended
    await admin.should_not_see(marker=f"inflight-{ex.id}", retries=40)
