"""The instances REST API against a real llama-server on tiny models.

A launch goes all the way to a healthy server that answers; a refused launch leaves no trace: no
process, no record, no reserved port.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from sqlmodel import select

from llamaman.app import LlamaMan
from llamaman.core.config import Settings
from llamaman.core.state import InstanceState
from llamaman.core.tables import Instance
from llamaman.testing.tiny_gguf import write_tiny_model
from tests.helpers import api_client, auth_of, chat, servers_of

pytestmark = pytest.mark.llama

S = InstanceState


def stored_instances(services: LlamaMan) -> list[Instance]:
    with services.db.session() as s:
        return list(s.exec(select(Instance)))


async def launch_healthy(api: httpx.AsyncClient, services: LlamaMan, **body: Any) -> dict[str, Any]:
    r = await api.post("/api/instances", json={"model_path": "tiny-a.gguf", "ctx_size": 512, **body})
    assert r.status_code == 201, r.text
    created = r.json()
    m = services.supervisor.get(created["id"])
    assert await m.proc.wait_for({S.HEALTHY, S.FAILED}, timeout=30) == S.HEALTHY, m.proc.error
    return created


def is_run_of(lines: list[str], log: list[str]) -> bool:
    """Whether ``lines`` appear one after another somewhere in ``log``."""
    return run_end(lines, log) is not None


def run_end(lines: list[str], log: list[str]) -> int | None:
    """Where the last place ``lines`` appear one after another in ``log`` ends (None: nowhere)."""
    n = len(lines)
    return next((i + n for i in range(len(log) - n, -1, -1) if log[i : i + n] == lines), None)


async def read_log_events(lines: AsyncIterator[str], count: int, timeout: float = 10) -> list[str]:
    """The next ``count`` log lines of the log stream (plain ``data:`` events, not state events)."""
    found: list[str] = []

    async def collect() -> None:
        event = "message"
        async for line in lines:
            if line == "":
                event = "message"
            elif line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: ") and event == "message":
                found.append(json.loads(line.removeprefix("data: ")))
                if len(found) == count:
                    return

    await asyncio.wait_for(collect(), timeout)
    return found


# ---- a launch that works ---------------------------------------------------------------------


async def test_launched_instance_becomes_healthy_answers_and_is_listed_with_its_logs(
    api: httpx.AsyncClient, services: LlamaMan
) -> None:
    r = await api.post("/api/instances", json={"model_path": "tiny-a.gguf", "ctx_size": 512})
    assert r.status_code == 201, r.text
    created = r.json()
    iid, port = created["id"], created["port"]
    assert created["model_path"] == "tiny-a.gguf" and created["model_name"] == "tiny-a"
    assert created["status"] in ("starting", "healthy")
    assert services.settings.port_range_start <= port <= services.settings.port_range_end
    assert created["settings"]["ctx_size"] == 512

    m = services.supervisor.get(iid)
    assert await m.proc.wait_for({S.HEALTHY, S.FAILED}, timeout=30) == S.HEALTHY, m.proc.error
    shown = (await api.get(f"/api/instances/{iid}")).json()
    assert shown["status"] == "healthy"
    assert shown["pid"] in {p.pid for p in servers_of(str(services.settings.data_dir))}
    assert "-c" in shown["command"] and shown["command"][shown["command"].index("-c") + 1] == "512"

    assert (await chat(port, headers=auth_of(api))).startswith("abcdef")

    listed = (await api.get("/api/instances")).json()
    assert [(i["id"], i["status"]) for i in listed] == [(iid, "healthy")]
    # The port the instance holds is not offered again.
    suggested = (await api.get("/api/next-port")).json()["port"]
    assert suggested != port

    r = await api.get(f"/api/instances/{iid}/logs", params={"lines": 5})
    assert r.status_code == 200
    tail = r.json()["lines"]
    assert len(tail) == 5  # llama-server logs far more than five lines while loading
    assert is_run_of(tail, m.proc.tail(1000))

    await services.supervisor.flush()
    [row] = stored_instances(services)
    assert row.id == iid and row.state == "healthy" and row.pid == shown["pid"]
    assert row.started_at == shown["started_at"] and row.started_at is not None


async def test_log_stream_sends_existing_lines_then_new_ones(
    api: httpx.AsyncClient, services: LlamaMan
) -> None:
    created = await launch_healthy(api, services)
    m = services.supervisor.get(created["id"])
    async with (
        api_client(services, streaming=True) as sse,
        sse.stream("GET", f"/api/instances/{created['id']}/logs/stream", params={"lines": 3}) as r,
    ):
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = r.aiter_lines()
        existing = await read_log_events(lines, 3)
        assert is_run_of(existing, m.proc.tail(1000))
        # A request makes llama-server log; the open stream passes those lines on. A healthy server
        # may still be finishing its start-up log ("listening on ..." comes after /health answers),
        # so the lines read are not taken as the request's by their position: read on until one that
        # only a request writes (its slot's processing and timings) arrives. Every line read on the
        # way must follow the existing ones in the server's log, none lost and none twice.
        assert (await chat(created["port"], headers=auth_of(api))).startswith("abc")
        live: list[str] = []
        while not any(_written_by_a_request(line) for line in live):
            assert len(live) < 1000, f"no line of the request arrived: {live}"
            live += await read_log_events(lines, 1)
        assert is_run_of(existing + live, m.proc.tail(10_000)), (existing, live)


def _written_by_a_request(line: str) -> bool:
    # llama-server's slot lines: "launch_slot_: ... processing task", "print_timing: ...",
    # "release: ... stop processing". Start-up lines have neither word.
    return "processing" in line or "print_timing" in line


async def test_instance_restarts_then_stops_then_is_removed_from_list_and_database(
    api: httpx.AsyncClient, services: LlamaMan
) -> None:
    created = await launch_healthy(api, services)
    iid, port = created["id"], created["port"]
    m = services.supervisor.get(iid)
    first_pid = m.proc.pid
    assert first_pid is not None

    r = await api.post(f"/api/instances/{iid}/restart")
    assert r.status_code == 200, r.text
    assert await m.proc.wait_for({S.HEALTHY, S.FAILED}, timeout=30) == S.HEALTHY, m.proc.error
    assert m.proc.pid not in (None, first_pid)
    assert not psutil.pid_exists(first_pid) or psutil.Process(first_pid).status() == psutil.STATUS_ZOMBIE
    assert (await api.get(f"/api/instances/{iid}")).json()["port"] == port
    assert (await chat(port, headers=auth_of(api))).startswith("abc")

    r = await api.delete(f"/api/instances/{iid}")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "stopped" and r.json()["pid"] is None
    assert servers_of(str(services.settings.data_dir)) == []
    await services.supervisor.flush()
    [row] = stored_instances(services)
    assert row.state == "stopped" and row.pid is None and row.desired_running is False
    # Stopped, the instance stays listed.
    assert [i["id"] for i in (await api.get("/api/instances")).json()] == [iid]

    r = await api.delete(f"/api/instances/{iid}/remove")
    assert r.status_code == 200 and r.json() == {"removed": iid}
    assert (await api.get("/api/instances")).json() == []
    r = await api.get(f"/api/instances/{iid}")
    assert r.status_code == 404 and iid in r.json()["error"]
    assert stored_instances(services) == []
    assert services.supervisor.ports.taken == frozenset()


async def test_next_port_is_a_free_port_of_the_pool(api: httpx.AsyncClient, settings: Settings) -> None:
    r = await api.get("/api/next-port")
    assert r.status_code == 200
    port = r.json()["port"]
    assert settings.port_range_start <= port <= settings.port_range_end
    with socket.socket() as s:
        # Nothing listens there: a server can bind it (as llama-server does, with SO_REUSEADDR).
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen()


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/instances/nope"),
        ("DELETE", "/api/instances/nope"),
        ("POST", "/api/instances/nope/restart"),
        ("DELETE", "/api/instances/nope/remove"),
        ("GET", "/api/instances/nope/logs"),
        ("GET", "/api/instances/nope/logs/stream"),
    ],
)
async def test_unknown_instance_is_answered_with_404_naming_it(
    api: httpx.AsyncClient, method: str, path: str
) -> None:
    r = await api.request(method, path)
    assert r.status_code == 404
    assert "'nope' not found" in r.json()["error"]


# ---- launches that are refused ---------------------------------------------------------------


@dataclass(frozen=True)
class Refusal:
    """A launch body (built from the test's settings and folders) and how it must be refused."""

    body: Callable[[Settings, Path, ExitStack], dict[str, Any]]
    status: int
    words: tuple[str, ...]


def _listening_socket(port: int, stack: ExitStack) -> None:
    s = stack.enter_context(socket.socket())
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen()


def _outside_model(tmp: Path) -> str:
    write_tiny_model(tmp / "elsewhere" / "outside.gguf")
    return str(tmp / "elsewhere" / "outside.gguf")


def _busy_port(st: Settings, stack: ExitStack) -> dict[str, Any]:
    _listening_socket(st.port_range_start + 2, stack)
    return {"model_path": "tiny-a.gguf", "port": st.port_range_start + 2}


def _non_gguf(st: Settings) -> dict[str, Any]:
    (st.models_dir / "notes.txt").write_text("not a model\n")
    return {"model_path": "notes.txt"}


def _tiny(**extra: Any) -> Callable[[Settings, Path, ExitStack], dict[str, Any]]:
    return lambda _st, _tmp, _stack: {"model_path": "tiny-a.gguf", **extra}


def _body(body: dict[str, Any]) -> Callable[[Settings, Path, ExitStack], dict[str, Any]]:
    return lambda _st, _tmp, _stack: body


REFUSALS: dict[str, Refusal] = {
    "no model_path": Refusal(_body({"ctx_size": 512}), 422, ("model_path", "required")),
    "empty model_path": Refusal(_body({"model_path": ""}), 422, ("model_path", "at least 1 character")),
    "blank model_path": Refusal(_body({"model_path": "   "}), 400, ("empty path",)),
    "system file": Refusal(_body({"model_path": "/etc/passwd"}), 400, ("outside the models folder",)),
    "absolute model outside": Refusal(
        lambda _st, tmp, _stack: {"model_path": _outside_model(tmp)}, 400, ("outside the models folder",)
    ),
    "dot-dot": Refusal(_body({"model_path": "../x.gguf"}), 400, ("'..' is not allowed",)),
    "dot-dot inside": Refusal(_body({"model_path": "sub/../../x.gguf"}), 400, ("'..' is not allowed",)),
    "missing model": Refusal(_body({"model_path": "missing.gguf"}), 404, ("not found", "missing.gguf")),
    "not a gguf": Refusal(lambda st, _tmp, _stack: _non_gguf(st), 400, ("notes.txt", "not a GGUF")),
    "port outside pool": Refusal(_tiny(port=1), 400, ("port 1", "outside the pool")),
    "port in use": Refusal(lambda st, _tmp, stack: _busy_port(st, stack), 409, ("already in use",)),
    "negative ctx_size": Refusal(_tiny(ctx_size=-1), 422, ("ctx_size", "greater than or equal to 0")),
    "n_gpu_layers -2": Refusal(_tiny(n_gpu_layers=-2), 422, ("n_gpu_layers", "greater than or equal to -1")),
    "parallel 0": Refusal(_tiny(parallel=0), 422, ("parallel", "greater than or equal to 1")),
    "shell command chain": Refusal(_tiny(extra_args="; rm -rf /"), 422, ("extra_args", "shell")),
    "shell and-and": Refusal(_tiny(extra_args="--foo && reboot"), 422, ("extra_args", "shell")),
    "command substitution": Refusal(_tiny(extra_args="$(whoami)"), 422, ("extra_args", "shell")),
    "backticks": Refusal(_tiny(extra_args="`id`"), 422, ("extra_args", "shell")),
    "managed flag": Refusal(_tiny(extra_args="-m other.gguf"), 422, ("extra_args", "-m", "model_path")),
    "unbalanced quote": Refusal(
        _tiny(extra_args='--alias "oops'), 422, ("extra_args", "could not be parsed", "quotation")
    ),
    "unknown field": Refusal(_tiny(bogus=1), 422, ("bogus", "not permitted")),
    "wrong type": Refusal(_tiny(ctx_size="big"), 422, ("ctx_size", "integer")),
    "gpu_devices with shell": Refusal(_tiny(gpu_devices="0;1"), 422, ("gpu_devices", "comma-separated")),
}


@pytest.fixture(params=list(REFUSALS), ids=list(REFUSALS))
def refusal(request: pytest.FixtureRequest) -> Refusal:
    return REFUSALS[request.param]


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    with ExitStack() as s:
        yield s


async def test_bad_launch_is_refused_with_a_clear_message_and_nothing_runs_or_is_stored(
    api: httpx.AsyncClient, services: LlamaMan, tmp_path: Path, stack: ExitStack, refusal: Refusal
) -> None:
    body = refusal.body(services.settings, tmp_path, stack)
    r = await api.post("/api/instances", json=body)
    assert r.status_code == refusal.status, r.text
    error = r.json()["error"]
    assert isinstance(error, str) and "Traceback" not in error
    for word in refusal.words:
        assert word.lower() in error.lower(), error

    assert services.supervisor.list() == []
    assert servers_of(str(services.settings.data_dir)) == []
    await services.supervisor.flush()
    assert stored_instances(services) == []
    assert services.supervisor.ports.taken == frozenset()
    assert services.supervisor.internal_ports.taken == frozenset()
