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
    sliders = list(admin.find(kind=ui.slider).elements)
    assert len(sliders) >= 5, "sampling controls are missing"
    # A short answer: the stats line comes when the stream ends, and 512 tokens take a while on a
    # busy machine.
    next(s for s in sliders if s.props.get("aria-label") == "Max tokens").value = 24
    admin.find(marker="playground-prompt").type("hello")
    admin.find(marker="playground-send").click()
    want = expected_text("A", 24)
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
    assert _reply_texts(admin) == [want]  # all of it, and no more than asked for
    assert any(m.record.model_path == "tiny-a.gguf" for m in services.supervisor.list())


def _reply_texts(user: User) -> list[str]:
    return [
        " ".join(getattr(e, "content", "") for e in r.descendants() if hasattr(e, "content"))
        for r in user.find(marker="reply").elements
    ]


async def test_raw_completion_and_regenerate_replace_the_reply(admin: User, llama_server_bin: str) -> None:
    await started(admin)
    await admin.open("/playground")
    select = next(iter(admin.find(marker="playground-model").elements))
    select.value = "tiny-a.gguf"
    await admin.should_see("Chat template: built into the model")
    mode = next(iter(admin.find(marker="playground-mode").elements))
    mode.value = "raw"
    await admin.should_see("without a chat template")
    admin.find(marker="playground-prompt").type("hello")
    admin.find(marker="playground-send").click()
    stats_label = next(iter(admin.find(marker="playground-stats").elements))
    for _ in range(400):  # the stats line (prompt and generation figures) comes once the reply is done
        if stats_label.text.startswith("prompt "):
            break
        await asyncio.sleep(0.05)
    stats = stats_label.text
    assert stats.startswith("prompt ") and "tok/s" in stats
    first = _reply_texts(admin)
    assert len(first) == 1 and first[0].strip() not in ("", "…")
    admin.find(marker="regenerate").click()
    for _ in range(200):
        texts = _reply_texts(admin)
        if (
            len(texts) == 1
            and texts[0].strip() not in ("", "…")
            and next(iter(admin.find(marker="playground-send").elements)).visible
        ):
            break
        await asyncio.sleep(0.05)
    assert len(_reply_texts(admin)) == 1, "regenerating replaces the reply instead of adding one"
