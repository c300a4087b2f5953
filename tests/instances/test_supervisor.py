"""The supervisor against a real llama-server on tiny models (and a fake one for forced faults)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from sqlmodel import select

from llamaman.app import LlamaMan
from llamaman.core.state import InstanceState
from llamaman.core.tables import Instance
from llamaman.instances.launch import LaunchSettings
from llamaman.instances.ownership import ENV_INSTANCE_ID, ENV_OWNER
from llamaman.instances.supervisor import InstanceError
from tests.helpers import chat, servers_of

S = InstanceState


async def test_launched_instance_becomes_healthy_answers_and_stops_without_orphans(
    services: LlamaMan,
) -> None:
    sup = services.supervisor
    m = await sup.launch(LaunchSettings(model_path="tiny-a.gguf", ctx_size=512))
    assert await m.proc.wait_for({S.HEALTHY, S.FAILED}, timeout=30) == S.HEALTHY
    assert (await chat(m.record.port, headers=m.proc.auth_headers)).startswith("abcdef")
    pid = m.proc.pid
    assert pid is not None
    group = [p.pid for p in servers_of(str(services.settings.data_dir))]
    assert pid in group

    await sup.stop(m.id)
    assert m.state == S.STOPPED
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert servers_of(str(services.settings.data_dir)) == []
    await sup.flush()
    with services.db.session() as s:
        row = s.get(Instance, m.id)
        assert row is not None and row.state == "stopped" and row.pid is None


async def test_killed_server_keeps_its_exit_code_and_last_lines_while_it_restarts(services: LlamaMan) -> None:
    m = await services.supervisor.launch(LaunchSettings(model_path="tiny-b.gguf", ctx_size=512))
    await m.proc.wait_for({S.HEALTHY}, timeout=30)
    assert m.proc.pid is not None
    t0 = time.monotonic()
    os.kill(m.proc.pid, signal.SIGKILL)
    # It comes back by itself (tests/instances/test_crash_recovery.py); the reason shows meanwhile.
    await m.proc.wait_for({S.RESTARTING}, timeout=2)
    assert time.monotonic() - t0 < 2
    assert m.proc.exit_code == -signal.SIGKILL
    assert m.proc.error and "SIGKILL" in m.proc.error
    # The error keeps the server's last words (llama-server logs its startup).
    assert len(m.proc.error.splitlines()) > 3
    await services.supervisor.flush()
    with services.db.session() as s:
        row = s.get(Instance, m.id)
        assert row is not None and row.state == "restarting" and row.exit_code == -9 and row.last_log


async def test_restart_of_the_app_brings_back_running_instances_exactly_once(settings: Any) -> None:
    first = LlamaMan(settings)
    await first.start()
    a = await first.supervisor.launch(LaunchSettings(model_path="tiny-a.gguf", ctx_size=512))
    b = await first.supervisor.launch(LaunchSettings(model_path="tiny-b.gguf", ctx_size=512))
    for m in (a, b):
        await m.proc.wait_for({S.HEALTHY}, timeout=30)
    await first.stop()
    assert servers_of(str(settings.data_dir)) == []

    second = LlamaMan(settings)
    await second.start()
    try:
        ms = second.supervisor.list()
        assert {m.id for m in ms} == {a.id, b.id}
        for m in ms:
            assert await m.proc.wait_for({S.HEALTHY, S.FAILED}, timeout=30) == S.HEALTHY
        assert len(servers_of(str(settings.data_dir))) == 2
        ma, mb = second.supervisor.get(a.id), second.supervisor.get(b.id)
        assert (await chat(ma.record.port, headers=ma.proc.auth_headers)).startswith("abc")
        assert (await chat(mb.record.port, headers=mb.proc.auth_headers)).startswith("zyx")
    finally:
        await second.stop()
    assert servers_of(str(settings.data_dir)) == []


CRASHING_APP = textwrap.dedent(
    """
    import asyncio, sys
    from llamaman.core.config import Settings
    from llamaman.instances.launch import LaunchSettings
    from llamaman.app import LlamaMan
    from llamaman.core.state import InstanceState

    async def main():
        svc = LlamaMan(Settings())
        await svc.start()
        for name in ("tiny-a.gguf", "tiny-b.gguf"):
            m = await svc.supervisor.launch(LaunchSettings(model_path=name, ctx_size=512))
            await m.proc.wait_for({InstanceState.HEALTHY}, timeout=30)
        await svc.supervisor.flush()
        print("ready", flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main())
    """
)


async def test_servers_left_by_a_crashed_app_are_adopted_not_duplicated(settings: Any) -> None:
    env = {
        **os.environ,
        "MODELS_DIR": str(settings.models_dir),
        "DATA_DIR": str(settings.data_dir),
        "LLAMAMAN_HOST": "127.0.0.1",
        "PORT_RANGE_START": str(settings.port_range_start),
        "PORT_RANGE_END": str(settings.port_range_end),
        "INTERNAL_PORT_RANGE_START": str(settings.internal_port_range_start),
        "INTERNAL_PORT_RANGE_END": str(settings.internal_port_range_end),
        "LLAMA_SERVER_BIN": str(settings.llama_server_bin),
    }
    app = subprocess.Popen(
        [sys.executable, "-c", CRASHING_APP],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        line = await asyncio.wait_for(asyncio.to_thread(app.stdout.readline), 60)  # type: ignore[union-attr]
        assert line.strip() == "ready"
        before = {p.pid for p in servers_of(str(settings.data_dir))}
        assert len(before) == 2
        app.kill()  # the app dies; its llama-servers live on in their own process groups
        app.wait()
        assert {p.pid for p in servers_of(str(settings.data_dir))} == before
    finally:
        if app.poll() is None:
            app.kill()

    svc = LlamaMan(settings)
    await svc.start()
    try:
        for m in svc.supervisor.list():
            assert await m.proc.wait_for({S.HEALTHY, S.FAILED}, timeout=30) == S.HEALTHY
        after = {p.pid for p in servers_of(str(settings.data_dir))}
        assert after == before  # adopted: the same processes, none started twice
        by_name = {m.record.model_name: m for m in svc.supervisor.list()}
        ma = by_name["tiny-a"]
        assert (await chat(ma.record.port, headers=ma.proc.auth_headers)).startswith("abc")
    finally:
        await svc.stop()
    assert servers_of(str(settings.data_dir)) == []


async def test_stray_server_without_a_record_is_killed_at_start(settings: Any, tmp_path: Path) -> None:
    port = settings.port_range_start
    stray = subprocess.Popen(
        [str(settings.llama_server_bin), "-m", str(settings.models_dir / "tiny-a.gguf"), "--port", str(port)],
        env={**os.environ, ENV_INSTANCE_ID: "gone", ENV_OWNER: str(settings.data_dir)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    svc = LlamaMan(settings)
    await svc.start()
    try:
        stray.wait(timeout=5)
        assert stray.returncode == -signal.SIGKILL
    finally:
        if stray.poll() is None:
            stray.kill()
        await svc.stop()


async def test_ports_in_use_are_skipped(services: LlamaMan) -> None:
    import socket

    busy = socket.socket()
    busy.bind(("127.0.0.1", services.settings.port_range_start))
    busy.listen()
    try:
        assert services.supervisor.next_port() == services.settings.port_range_start + 1
        with pytest.raises(InstanceError) as err:
            await services.supervisor.launch(
                LaunchSettings(model_path="tiny-a.gguf", port=services.settings.port_range_start)
            )
        assert err.value.status_code == 409
    finally:
        busy.close()


async def test_server_that_exits_while_loading_fails_at_once(
    make_settings: Any, fake_server_bin: Any
) -> None:
    svc = LlamaMan(make_settings(LLAMA_SERVER_BIN=fake_server_bin("exit-during-load")))
    await svc.start()
    try:
        m = await svc.supervisor.launch(LaunchSettings(model_path="tiny-a.gguf"))
        t0 = time.monotonic()
        await m.proc.wait_for({S.FAILED}, timeout=5)
        assert time.monotonic() - t0 < 2
        assert m.proc.exit_code == 3
        assert "failed to load model" in (m.proc.error or "")
    finally:
        await svc.stop()


async def test_server_ignoring_sigterm_is_killed_after_the_grace_period(
    make_settings: Any, fake_server_bin: Any
) -> None:
    svc = LlamaMan(make_settings(LLAMA_SERVER_BIN=fake_server_bin("ignore-sigterm"), LLAMAMAN_STOP_GRACE=0.5))
    await svc.start()
    try:
        m = await svc.supervisor.launch(LaunchSettings(model_path="tiny-a.gguf"))
        await m.proc.wait_for({S.HEALTHY}, timeout=10)
        pid = m.proc.pid
        t0 = time.monotonic()
        await svc.supervisor.stop(m.id)
        assert 0.4 < time.monotonic() - t0 < 5
        assert pid is not None and not psutil.pid_exists(pid)
        assert any("ignoring SIGTERM" in line for line in m.proc.tail(20))
    finally:
        await svc.stop()


async def test_server_that_never_gets_healthy_fails_after_the_load_timeout(
    make_settings: Any, fake_server_bin: Any
) -> None:
    svc = LlamaMan(make_settings(LLAMA_SERVER_BIN=fake_server_bin("never-healthy"), MODEL_LOAD_TIMEOUT=1))
    await svc.start()
    try:
        m = await svc.supervisor.launch(LaunchSettings(model_path="tiny-a.gguf"))
        await m.proc.wait_for({S.FAILED}, timeout=10)
        assert "MODEL_LOAD_TIMEOUT" in (m.proc.error or "")
        assert servers_of(str(svc.settings.data_dir)) == []
    finally:
        await svc.stop()


async def test_stopped_instance_restarts_on_the_same_port(services: LlamaMan) -> None:
    m = await services.supervisor.launch(LaunchSettings(model_path="tiny-a.gguf", ctx_size=512))
    await m.proc.wait_for({S.HEALTHY}, timeout=30)
    port = m.record.port
    await services.supervisor.stop(m.id)
    await services.supervisor.restart(m.id)
    await m.proc.wait_for({S.HEALTHY}, timeout=30)
    assert m.record.port == port
    assert (await chat(port, headers=m.proc.auth_headers)).startswith("abc")


async def test_sleeping_instance_keeps_its_record_and_wakes(services: LlamaMan) -> None:
    m = await services.supervisor.launch(LaunchSettings(model_path="tiny-a.gguf", ctx_size=512))
    await m.proc.wait_for({S.HEALTHY}, timeout=30)
    await services.supervisor.sleep(m.id)
    assert m.state == S.SLEEPING and m.proc.pid is None
    await services.supervisor.wake(m.id)
    assert await m.proc.wait_for({S.HEALTHY}, timeout=30) == S.HEALTHY


async def test_records_are_listed_in_the_database(services: LlamaMan) -> None:
    m = await services.supervisor.launch(LaunchSettings(model_path="tiny-a.gguf", ctx_size=512))
    await m.proc.wait_for({S.HEALTHY}, timeout=30)
    await services.supervisor.flush()
    with services.db.session() as s:
        rows = list(s.exec(select(Instance)))
    assert [r.id for r in rows] == [m.id]
    assert rows[0].state == "healthy" and rows[0].model_name == "tiny-a"
