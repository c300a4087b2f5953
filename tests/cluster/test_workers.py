"""Registered RPC workers: which are alive, which a launch may use, what ``GET /api/workers`` shows,
and the launches refused before anything runs (unknown or silent workers, a llama-server without
RPC, ``--rpc`` smuggled through the extra flags)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from sqlmodel import select

from llamaman.app import LlamaMan
from llamaman.cluster.workers import WorkerView, choose, refuse_unusable, views
from llamaman.core.config import Settings
from llamaman.core.tables import Instance, RpcWorker
from llamaman.instances.instance import InstanceRejected
from llamaman.instances.launch import LaunchSettings
from llamaman.testing.binaries import rpc_capable_llama_server
from tests.helpers import api_client, asgi, servers_of

GIB = 1024**3


def _row(address: str, free_gib: int, age: float, now: float = 1000.0) -> RpcWorker:
    return RpcWorker(
        address=address, node="box", memory_total=64 * GIB, memory_free=free_gib * GIB, heartbeat_at=now - age
    )


def test_a_worker_silent_longer_than_the_timeout_is_not_alive() -> None:
    listed = views([_row("10.0.0.9:50052", 8, age=4.5), _row("10.0.0.7:50052", 8, age=1)], 1000.0, 4.0)
    assert [(w.address, w.alive) for w in listed] == [("10.0.0.7:50052", True), ("10.0.0.9:50052", False)]


def test_a_launch_naming_an_unknown_or_silent_worker_is_refused_naming_it() -> None:
    now = time.time()
    workers = views([_row("10.0.0.7:50052", 8, 1, now), _row("10.0.0.8:50052", 8, 30, now)], now, 4.0)
    refuse_unusable(["10.0.0.7:50052"], workers)
    with pytest.raises(InstanceRejected, match=r"10\.0\.0\.6:50052 is not a registered worker"):
        refuse_unusable(["10.0.0.7:50052", "10.0.0.6:50052"], workers)
    with pytest.raises(InstanceRejected, match=r"10\.0\.0\.8:50052 has not been heard from for 30 s"):
        refuse_unusable(["10.0.0.8:50052"], workers)


def test_workers_are_chosen_largest_first_until_their_free_memory_covers_the_need() -> None:
    def w(address: str, free: int, alive: bool = True) -> WorkerView:
        return WorkerView(address, "box", 64 * GIB, free * GIB, 0, alive)

    pool = [w("a:1", 10), w("b:1", 30), w("c:1", 20), w("d:1", 90, alive=False)]
    assert choose(pool, 25 * GIB) == ["b:1"]
    assert choose(pool, 45 * GIB) == ["b:1", "c:1"]
    assert choose(pool, 60 * GIB) == ["b:1", "c:1", "a:1"]
    assert choose(pool, 61 * GIB) == []  # the dead worker's memory does not count


@pytest.mark.parametrize(
    "addresses,words",
    [
        (["10.0.0.7"], ("not a host:port",)),
        (["10.0.0.7:0"], ("not a host:port",)),
        (["0.0.0.0:50052"], ("listen-anywhere",)),
        (["10.0.0.7:50052", " 10.0.0.7:50052 "], ("listed twice",)),
        (["10.0.0.7:50052;rm -rf /"], ("not a host:port",)),
    ],
)
def test_worker_addresses_must_be_distinct_host_port_pairs(addresses: list[str], words: tuple[str]) -> None:
    with pytest.raises(ValueError) as refused:
        LaunchSettings(model_path="m.gguf", rpc_workers=addresses)
    for word in words:
        assert word in str(refused.value)
    ok = LaunchSettings(
        model_path="m.gguf", rpc_workers=[" 10.0.0.7:50052", "[fd00::7]:50052", "w3.lan:50053"]
    )
    assert ok.rpc_workers == ["10.0.0.7:50052", "[fd00::7]:50052", "w3.lan:50053"]


# ---- through the REST API ---------------------------------------------------------------------


@pytest.fixture
async def box(
    make_settings: Callable[..., Settings], fake_server_bin: Callable[[str], str]
) -> AsyncIterator[Any]:
    # A llama-server whose --help lists no --rpc, as a build without GGML_RPC: refused before a spawn.
    services = LlamaMan(make_settings(LLAMA_SERVER_BIN=fake_server_bin("ok")))
    await services.start()
    try:
        yield services
    finally:
        await services.stop()


def _register(services: LlamaMan, *rows: RpcWorker) -> None:
    with services.db.session() as s:
        for r in rows:
            s.add(r)
        s.commit()


async def _nothing_launched(services: LlamaMan) -> None:
    assert services.supervisor.list() == []
    assert servers_of(str(services.settings.data_dir)) == []
    await services.supervisor.flush()
    with services.db.session() as s:
        assert list(s.exec(select(Instance))) == []


async def test_the_api_lists_registered_workers_with_memory_and_liveness(box: LlamaMan) -> None:
    now = time.time()
    _register(box, _row("10.0.0.7:50052", 20, 0.5, now), _row("10.0.0.8:50052", 30, 60, now))
    async with api_client(box) as api:
        r = await api.get("/api/workers")
    assert r.status_code == 200, r.text
    listed = {w["address"]: w for w in r.json()["workers"]}
    assert listed["10.0.0.7:50052"]["alive"] is True and listed["10.0.0.8:50052"]["alive"] is False
    assert listed["10.0.0.7:50052"]["memory_free"] == 20 * GIB
    assert listed["10.0.0.7:50052"]["node"] == "box"


async def test_a_launch_over_workers_on_a_llama_server_without_rpc_is_refused_with_422(box: LlamaMan) -> None:
    _register(box, _row("127.0.0.1:50052", 8, 0, time.time()))
    async with api_client(box) as api:
        r = await api.post(
            "/api/instances", json={"model_path": "tiny-a.gguf", "rpc_workers": ["127.0.0.1:50052"]}
        )
    assert r.status_code == 422, r.text
    assert "GGML_RPC" in r.json()["error"] and "--rpc" in r.json()["error"]
    await _nothing_launched(box)


async def test_rpc_through_the_extra_flags_stays_refused_and_points_at_rpc_workers(box: LlamaMan) -> None:
    async with api_client(box) as api:
        r = await api.post(
            "/api/instances", json={"model_path": "tiny-a.gguf", "extra_args": "--rpc 127.0.0.1:50052"}
        )
    assert r.status_code == 422, r.text
    assert "rpc_workers" in r.json()["error"] and "network" in r.json()["error"]
    await _nothing_launched(box)


def _rpc_capable_llama_server() -> str:
    found = rpc_capable_llama_server()
    if found is None:
        pytest.skip(
            "needs a llama-server built with GGML_RPC=ON in LLAMA_SERVER_BIN (its --help lists --rpc)"
        )
    return found.path


async def test_a_launch_over_an_unknown_or_silent_worker_is_refused_naming_it(
    make_settings: Callable[..., Settings],
) -> None:
    services = LlamaMan(make_settings(LLAMA_SERVER_BIN=_rpc_capable_llama_server()))
    await services.start()
    try:
        _register(
            services, _row("127.0.0.1:50061", 8, 0, time.time()), _row("127.0.0.1:50062", 8, 60, time.time())
        )
        async with api_client(services) as api:
            for workers, named in (
                (["127.0.0.1:50061", "127.0.0.1:50063"], "127.0.0.1:50063 is not a registered worker"),
                (["127.0.0.1:50062"], "127.0.0.1:50062 has not been heard from"),
            ):
                r = await api.post(
                    "/api/instances", json={"model_path": "tiny-a.gguf", "rpc_workers": workers}
                )
                assert r.status_code == 422, r.text
                assert named in r.json()["error"]
        await _nothing_launched(services)
    finally:
        await services.stop()


async def test_a_preset_keeps_its_workers_and_an_on_demand_load_over_them_fails_with_the_reason(
    box: LlamaMan,
) -> None:
    async with api_client(box) as api:
        r = await api.put("/api/presets/tiny-a.gguf", json={"settings": {"rpc_workers": ["10.0.0.7"]}})
        assert r.status_code == 422 and "host:port" in r.text, r.text
        r = await api.put("/api/presets/tiny-a.gguf", json={"settings": {"rpc_workers": ["127.0.0.1:50052"]}})
        assert r.status_code == 200, r.text
        assert (await api.get("/api/presets/tiny-a.gguf")).json()["settings"]["rpc_workers"] == [
            "127.0.0.1:50052"
        ]
    # The first request loads the model with its preset; the load fails as any load the router cannot
    # start does (503 in the caller's dialect), saying why.
    async with asgi(box, "proxy") as proxy:
        r = await proxy.post(
            "/v1/chat/completions",
            json={"model": "tiny-a", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3},
        )
    assert r.status_code == 503, r.text
    assert "GGML_RPC" in r.json()["error"]["message"]
    await _nothing_launched(box)


async def test_the_api_suggests_the_fewest_live_workers_that_hold_a_model(box: LlamaMan) -> None:
    now = time.time()
    async with api_client(box) as api:
        needed = (await api.get("/api/model-memory", params={"path": "tiny-a.gguf", "ctx_size": 512})).json()
        small, big, dead = 1024, 10 * GIB, 100 * GIB
        with box.db.session() as s:
            for address, free, age in (
                ("10.0.0.7:1", small, 0),
                ("10.0.0.8:1", big, 0),
                ("10.0.0.9:1", dead, 60),
            ):
                s.add(
                    RpcWorker(
                        address=address, node="b", memory_total=free, memory_free=free, heartbeat_at=now - age
                    )
                )
            s.commit()
        r = await api.get("/api/workers", params={"model_path": "tiny-a.gguf", "ctx_size": 512})
        assert r.status_code == 200, r.text
        assert r.json()["suggested"] == {
            "model_path": "tiny-a.gguf",
            "needed_bytes": needed["total_bytes"],
            "workers": ["10.0.0.8:1"],  # the silent one is never suggested, however large
        }
        r = await api.get("/api/workers", params={"model_path": "nope.gguf"})
        assert r.status_code == 404 and "nope.gguf" in r.json()["error"]
