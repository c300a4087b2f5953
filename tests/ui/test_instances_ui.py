"""The main story: the model list, the launch form, launching a tiny model, its card turning healthy as
the event arrives, the server's own lines in the log tail, and stopping it."""

from __future__ import annotations

import asyncio

import pytest
from nicegui import ui
from nicegui.testing import User

from llamaman.core.state import InstanceState
from llamaman.instances.launch import LaunchSettings
from tests.ui.conftest import started

pytestmark = pytest.mark.nicegui_main_file("tests/ui/app_for_tests.py")


def _field(user: User, name: str) -> ui.element:
    return next(iter(user.find(marker=f"field-{name}").elements))


async def test_model_library_lists_the_tiny_models(admin: User) -> None:
    await admin.should_see("Model library")
    for name in ("tiny-a", "tiny-b", "tiny-embed"):
        await admin.should_see(name)
    await admin.should_see("embedding")
    admin.find(marker="library-search").type("embed")
    await admin.should_see("1 of 4")
    await admin.should_not_see("tiny-b")


async def test_delete_a_model_after_confirming(admin: User) -> None:
    services = await started(admin)
    target = services.settings.models_dir / "tiny-b.gguf"
    assert target.exists()
    admin.find(marker="delete-tiny-b.gguf").click()
    await admin.should_see("These files are removed from disk:")
    admin.find(marker="confirm-delete").click()
    for _ in range(40):
        if not target.exists():
            break
        await asyncio.sleep(0.05)
    assert not target.exists()
    await admin.should_not_see(marker="delete-tiny-b.gguf", retries=20)
    admin.notify.contains("Deleted tiny-b.gguf")


async def test_launch_form_shows_defaults_estimate_command_and_inline_errors(admin: User) -> None:
    await admin.open("/launch?model=tiny-a.gguf")
    ctx = _field(admin, "ctx_size")
    assert ctx.value == 4096  # the LaunchSettings default
    assert _field(admin, "n_gpu_layers").props["suffix"] == "/ 2 layers"
    await admin.should_see("Estimated memory")
    command = next(iter(admin.find(marker="command").elements))
    assert "tiny-a.gguf" in command.content and "-c 4096" in command.content

    admin.find(marker="field-ctx_size").clear().type("-5")
    await asyncio.sleep(0.1)
    assert ctx.props.get("error") is True
    assert "greater than or equal to 0" in ctx.props["error-message"]
    assert not next(iter(admin.find(kind=ui.button, content="Launch").elements)).enabled
    admin.find(marker="field-ctx_size").clear().type("2048")
    await asyncio.sleep(0.1)
    assert not ctx.props.get("error")
    assert "-c 2048" in command.content


async def test_launch_healthy_log_and_stop(admin: User, llama_server_bin: str) -> None:
    services = await started(admin)
    await admin.open("/launch?model=tiny-a.gguf")
    admin.find(marker="field-ctx_size").clear().type("1024")
    admin.find(kind=ui.button, content="Launch").click()
    for _ in range(100):
        if services.supervisor.list():
            break
        await asyncio.sleep(0.05)
    m = services.supervisor.list()[0]
    await admin.should_see(marker=f"instance-{m.id}", retries=50)

    # The card follows the supervisor's events: right after the state changes, no timer tick needed.
    await m.proc.wait_for({InstanceState.HEALTHY, InstanceState.FAILED}, timeout=60)
    assert m.state == InstanceState.HEALTHY, m.proc.error
    await asyncio.sleep(0.05)
    badge = next(iter(admin.find(marker="status").elements))
    assert badge.text == "healthy"

    server_lines = [line for line in m.proc.tail(200) if line.strip() and not line.startswith("---")]
    assert server_lines, "llama-server wrote nothing"
    await admin.should_see(content=server_lines[-1][:60], retries=20)

    admin.find(marker="stop").click()
    await m.proc.wait_for({InstanceState.STOPPED}, timeout=30)
    await asyncio.sleep(0.05)
    assert badge.text == "stopped"


async def test_failed_instance_shows_its_reason_and_log_search(admin: User, llama_server_bin: str) -> None:
    services = await started(admin)
    await admin.open("/")
    m = await services.supervisor.launch(LaunchSettings(model_path="broken.gguf"))
    await admin.should_see(marker=f"instance-{m.id}", retries=30)
    await m.proc.wait_for({InstanceState.FAILED, InstanceState.HEALTHY}, timeout=60)
    assert m.state == InstanceState.FAILED
    await asyncio.sleep(0.05)
    assert next(iter(admin.find(marker="status").elements)).text == "failed"
    await admin.should_see("llama-server exit code")  # the reason, first line of the error

    lines = [line for line in m.proc.tail(200) if line.strip()]
    needle = next(line for line in lines if "gguf" in line.lower())[:30]
    admin.find(marker="log-search").type("no line has this text")
    await admin.should_see("no matching lines")
    admin.find(marker="log-search").clear().type(needle)
    await admin.should_see(needle)
    await admin.should_not_see("no matching lines")


async def test_presets_save_and_load(admin: User) -> None:
    services = await started(admin)
    await admin.open("/launch?model=tiny-b.gguf")
    admin.find(marker="field-ctx_size").clear().type("3072")
    admin.find("Save preset").click()
    for _ in range(40):
        preset = await services.presets.get("tiny-b.gguf")
        if preset:
            break
        await asyncio.sleep(0.05)
    assert preset and preset["ctx_size"] == 3072
    admin.find("Reset").click()
    assert _field(admin, "ctx_size").value == 4096
    admin.find("Load preset").click()
    for _ in range(40):
        if _field(admin, "ctx_size").value == 3072:
            break
        await asyncio.sleep(0.05)
    assert _field(admin, "ctx_size").value == 3072


async def test_event_listeners_end_with_the_browser_connection(admin: User) -> None:
    services = await started(admin)
    await admin.open("/keys")  # a page without live panels
    baseline = len(services.events._listeners)
    await admin.open("/")
    assert len(services.events._listeners) > baseline  # the instances panel and the library listen
    client = admin.client
    assert client is not None
    for socket_id in list(client._socket_to_document_id):
        client.handle_disconnect(socket_id)
    assert len(services.events._listeners) == baseline
