"""The activity page filters by key and status, shows why a request was refused, charts the traffic
and exports what the filters select as CSV."""

from __future__ import annotations

import asyncio
import csv
import io
import time

import pytest
from nicegui import ui
from nicegui.testing import User

from llamaman.core.tables import RequestLog
from tests.ui.conftest import started

pytestmark = pytest.mark.nicegui_main_file("tests/ui/app_for_tests.py")


async def test_filters_reason_charts_and_csv(admin: User, monkeypatch: pytest.MonkeyPatch) -> None:
    services = await started(admin)
    now = time.time()
    chat = "/v1/chat/completions"
    rows = [
        RequestLog(
            ts=now - 120, model="tiny-a", endpoint=chat, key_name="webui", status=200, tokens_per_s=40.0
        ),
        RequestLog(ts=now - 60, model="tiny-a", endpoint=chat, key_name="ci", status=429),
        RequestLog(ts=now, model="tiny-b", endpoint=chat, key_name="webui", status=200, tokens_per_s=55.0),
    ]
    with services.telemetry.activity.db.session() as s:
        s.add_all(rows)
        s.commit()
    downloads: list[tuple[bytes, str]] = []
    monkeypatch.setattr(
        ui.download, "content", lambda data, name, media_type="": downloads.append((data, name))
    )
    await admin.open("/activity")
    table = next(iter(admin.find(marker="activity-table").elements))
    for _ in range(200):  # the page reads the log once its first refresh has flushed pending rows
        if table.rows:
            break
        await asyncio.sleep(0.05)
    assert len(table.rows) == 3
    charts = list(admin.find(kind=ui.echart).elements)
    assert any(s.get("name") == "tiny-b" for c in charts for s in c.options["series"])

    admin.find(marker="activity-key").type("webui")
    for _ in range(100):
        if len(table.rows) == 2:
            break
        await asyncio.sleep(0.05)
    assert {r["model"] for r in table.rows} == {"tiny-a", "tiny-b"}
    admin.find(marker="activity-key").clear()
    next(iter(admin.find(marker="activity-status").elements)).value = "4xx"
    for _ in range(100):
        if len(table.rows) == 1:
            break
        await asyncio.sleep(0.05)
    assert [r["status"] for r in table.rows] == [429]

    admin.find(marker="activity-csv").click()
    for _ in range(100):
        if downloads:
            break
        await asyncio.sleep(0.05)
    data, name = downloads[0]
    assert name.endswith(".csv")
    got = list(csv.DictReader(io.StringIO(data.decode())))
    assert [(r["key_name"], r["status"]) for r in got] == [("ci", "429")]
