"""Every uvicorn server of the process is ticked by one clock, and stops the moment it is told to."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator

import httpx
import pytest
import uvicorn

from llamaman.gateway import server_clock
from llamaman.gateway.server_clock import SharedClock, share_clock


async def _ok(scope: dict, receive: object, send: object) -> None:  # type: ignore[type-arg]
    await send({"type": "http.response.start", "status": 200, "headers": []})  # type: ignore[operator]
    await send({"type": "http.response.body", "body": b"ok"})  # type: ignore[operator]


class ClockedServer(SharedClock, uvicorn.Server):  # type: ignore[misc]
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class LibraryServer(uvicorn.Server):
    """Stands for a server class another library makes (NiceGUI's), given the clock afterwards."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the test calls the handler itself; uvicorn would raise the signal again on exit


share_clock(LibraryServer)


def _listening() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


async def _serve(cls: type[uvicorn.Server]) -> tuple[uvicorn.Server, asyncio.Task[None], int]:
    sock = _listening()
    config = uvicorn.Config(_ok, lifespan="off", log_config=None, log_level="warning")
    server = cls(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        assert not task.done(), task
        await asyncio.sleep(0.001)
    return server, task, sock.getsockname()[1]


@pytest.fixture
def ticks(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The ticks of every server, under a clock that would not tick during the test."""
    monkeypatch.setattr(server_clock, "TICK_SECONDS", 3600.0)
    seen: list[int] = []
    original = uvicorn.Server.on_tick

    async def on_tick(self: uvicorn.Server, counter: int) -> bool:
        seen.append(counter)
        return await original(self, counter)

    monkeypatch.setattr(uvicorn.Server, "on_tick", on_tick)
    yield seen


async def test_an_idle_server_does_not_wake_to_look_for_a_stop(ticks: list[int]) -> None:
    server, task, port = await _serve(ClockedServer)
    async with httpx.AsyncClient() as client:
        assert (await client.get(f"http://127.0.0.1:{port}/")).text == "ok"
    await asyncio.sleep(0.35)  # uvicorn's own loop would have ticked three times by now
    assert ticks == [0]  # only the first tick, which sets the Date header
    server.should_exit = True
    await asyncio.wait_for(task, 5)
    assert ticks == [0]  # the stop was noticed without a tick


async def test_a_library_servers_stop_from_another_thread_is_noticed_at_once(ticks: list[int]) -> None:
    server, task, _port = await _serve(LibraryServer)
    threading.Thread(target=setattr, args=(server, "should_exit", True)).start()
    await asyncio.wait_for(task, 5)
    assert ticks == [0]


async def test_a_signal_through_uvicorns_own_handler_stops_the_server(ticks: list[int]) -> None:
    server, task, _port = await _serve(LibraryServer)
    server.handle_exit(2, None)
    await asyncio.wait_for(task, 5)
    assert server.should_exit and ticks == [0]


async def test_one_clock_ticks_every_server_and_refreshes_their_date_headers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(server_clock, "TICK_SECONDS", 0.01)
    ticked: dict[int, list[int]] = {}
    both = asyncio.Event()
    original = uvicorn.Server.on_tick

    async def on_tick(self: uvicorn.Server, counter: int) -> bool:
        ticked.setdefault(id(self), []).append(counter)
        if len(ticked) == 2 and all(len(v) >= 3 for v in ticked.values()):
            both.set()
        return await original(self, counter)

    monkeypatch.setattr(uvicorn.Server, "on_tick", on_tick)
    servers = [await _serve(ClockedServer), await _serve(LibraryServer)]
    for server, _task, _port in servers:
        server.server_state.default_headers = []  # the next tick must put the Date header back
    await asyncio.wait_for(both.wait(), 5)
    clock = server_clock._clocks[asyncio.get_running_loop()]
    assert len(clock.servers) == 2 and clock.task is not None  # one task ticks both
    for server, _task, _port in servers:
        assert b"date" in [name for name, _value in server.server_state.default_headers]
        assert all(count % 10 == 0 for count in ticked[id(server)])  # each tick refreshes the Date
    for server, task, _port in servers:
        server.should_exit = True
        await asyncio.wait_for(task, 5)
    assert clock.servers == []


async def test_a_server_already_told_to_stop_does_not_start_waiting() -> None:
    server = ClockedServer(uvicorn.Config(_ok, lifespan="off", log_config=None))
    server.should_exit = True
    await asyncio.wait_for(server.main_loop(), 1)
