"""The playground streams model A's text through the router and relay, starting the model on demand."""

from __future__ import annotations

import asyncio

import pytest
from nicegui import ui
from nicegui.testing import User

from llamaman.testing.tiny_gguf import expected_text
from tests.ui.conftest import started

pytestmark = pytest.mark.nicegui_main_file("tests/ui/app_for_tests.py")


async def test_playground_streams_model_a(admin: User, llama_server_bin: str) -> None:
    services = await started(admin)
    await admin.open("/playground")
    select = next(iter(admin.find(marker="playground-model").elements))
    select.value = "tiny-a.gguf"
    assert len(admin.find(kind=ui.slider).elements) >= 5, "sampling controls are missing"
    admin.find(marker="playground-prompt").type("hello")
    admin.find(marker="playground-send").click()
    want = expected_text("A", 20)
    await admin.should_see(marker="reply", retries=50)
    for _ in range(600):
        replies = list(admin.find(marker="reply").elements)
        text = " ".join(
            getattr(e, "content", "") for r in replies for e in r.descendants() if hasattr(e, "content")
        )
        if want in text:
            break
        await asyncio.sleep(0.05)
    assert want in text
    await admin.should_see("tok/s", retries=100)
    assert any(m.record.model_path == "tiny-a.gguf" for m in services.supervisor.list())
