"""A llama-server that dies on its own comes back by itself, within limits (real servers, SIGKILL)."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Callable

import pytest

from llamaman.app import LlamaMan
from llamaman.core.config import Settings
from llamaman.core.state import InstanceState
from llamaman.instances.launch import LaunchSettings
from llamaman.instances.supervisor import ManagedInstance
from llamaman.testing.tiny_gguf import expected_text
from tests.helpers import asgi

S = InstanceState
HELLO = [{"role": "user", "content": "hi"}]
# The tiny models never stop by themselves: an unbounded answer fills the context, and beside a CPU
# hog that takes minutes.
ASK = {"model": "tiny-a", "messages": HELLO, "stream": False, "options": {"num_predict": 8}}


@pytest.fixture
async def box(make_settings: Callable[..., Settings], llama_server_bin: str) -> AsyncIterator[LlamaMan]:
    svc = LlamaMan(
        make_settings(LLAMA_SERVER_BIN=llama_server_bin, LLAMAMAN_RESTART_MAX=1, LLAMAMAN_RESTART_BACKOFF=1)
    )
    await svc.start()
    try:
        yield svc
    finally:
        await svc.stop()


async def launch(services: LlamaMan) -> ManagedInstance:
    m = await services.supervisor.launch(LaunchSettings(model_path="tiny-a.gguf", ctx_size=1024))
    assert await m.proc.wait_for({S.HEALTHY, S.FAILED}, timeout=30) == S.HEALTHY
    return m


def kill(m: ManagedInstance) -> int:
    pid = m.proc.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    return pid


async def test_a_killed_server_comes_back_by_itself_and_serves_the_request_that_waited(box: LlamaMan) -> None:
    m = await launch(box)
    old_pid = kill(m)
    assert await m.proc.wait_for({S.RESTARTING, S.FAILED}, timeout=10) == S.RESTARTING
    assert "attempt 1 of 1" in (m.proc.error or "") and "SIGKILL" in (m.proc.error or "")
    assert m.record.state == "restarting"
    async with asgi(box) as client:
        # Asked while it is down: the request waits for the restart instead of failing (or starting
        # a second copy of the model).
        r = await client.post("/api/chat", json=ASK)
    assert r.status_code == 200, r.text
    assert r.json()["message"]["content"] == expected_text("A", 8)
    assert m.state == S.HEALTHY and m.proc.pid not in (None, old_pid)
    assert [x.id for x in box.supervisor.list()] == [m.id]


async def test_once_its_restarts_are_spent_it_stays_failed_and_a_waiting_request_hears_why(
    box: LlamaMan,
) -> None:
    m = await launch(box)
    kill(m)
    assert await m.proc.wait_for({S.RESTARTING, S.FAILED}, timeout=10) == S.RESTARTING
    async with asgi(box) as client:
        asking = asyncio.create_task(client.post("/api/chat", json=ASK))
        while box.router.slot(m).inflight == 0:
            assert not asking.done(), (await asking).text
            await asyncio.sleep(0.02)
        # The model file goes while it waits: the restart's load dies too, and that was its last.
        (box.settings.models_dir / "tiny-a.gguf").unlink()
        r = await asyncio.wait_for(asking, 30)
    assert m.state == S.FAILED
    assert (m.proc.error or "").startswith("gave up after 1 restart(s)")
    assert r.status_code == 503
    assert "gave up after 1 restart(s)" in r.json()["error"]


async def test_a_stop_while_it_waits_to_restart_keeps_it_stopped(box: LlamaMan) -> None:
    m = await launch(box)
    kill(m)
    assert await m.proc.wait_for({S.RESTARTING, S.FAILED}, timeout=10) == S.RESTARTING
    await box.supervisor.stop(m.id)
    assert m.state == S.STOPPED
    await asyncio.sleep(1.5)  # past the backoff: the restart it was waiting for must not happen
    assert m.state == S.STOPPED and m.proc.pid is None
