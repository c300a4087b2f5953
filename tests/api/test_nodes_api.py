"""GET /api/nodes: who may read it, and what it says about each box sharing the database."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from llamaman.app import LlamaMan
from llamaman.cluster.nodes import NodeRegistry
from llamaman.core.config import Settings
from tests.helpers import admin_headers, api_client, asgi, inference_headers

SECRET = "n" * 24


@pytest.fixture
async def named_box(make_settings: Callable[..., Settings]) -> AsyncIterator[LlamaMan]:
    services = LlamaMan(
        make_settings(
            LLAMAMAN_NODE_NAME="alpha",
            LLAMAMAN_NODE_URL="http://10.0.0.1:5000",
            LLAMAMAN_NODE_SECRET=SECRET,
        )
    )
    await services.start()
    try:
        yield services
    finally:
        await services.stop()


async def test_a_standalone_box_says_nodes_are_off_and_lists_none(box: Any) -> None:
    async with api_client(box) as client:
        r = await client.get("/api/nodes")

    assert r.status_code == 200
    body = r.json()
    assert (body["enabled"], body["self"], body["nodes"]) == (False, None, [])


async def test_a_node_lists_itself_with_its_models_memory_and_load(named_box: LlamaMan) -> None:
    await named_box.nodes.beat()

    async with api_client(named_box) as client:
        body = (await client.get("/api/nodes")).json()

    assert (body["enabled"], body["self"], body["error"]) == (True, "alpha", None)
    [me] = body["nodes"]
    assert (me["name"], me["url"], me["self"], me["alive"]) == ("alpha", "http://10.0.0.1:5000", True, True)
    assert me["seconds_since_heartbeat"] < 5
    assert {"tiny-a", "tiny-b"} <= set(me["models_on_disk"])
    assert me["models_resident"] == [] and me["inflight"] == 0 and me["queued"] == 0
    ram = next(d for d in me["memory"] if d["id"] == "cpu")
    assert ram["total"] > 0 and 0 <= ram["free"] <= ram["total"]
    assert me["version"] and me["max_models"] is not None


async def test_another_node_appears_and_is_shown_dead_once_silent(
    named_box: LlamaMan, make_settings: Callable[..., Settings]
) -> None:
    now = [named_box.nodes.clock()]
    beta_settings = make_settings(
        LLAMAMAN_NODE_NAME="beta", LLAMAMAN_NODE_URL="http://10.0.0.2:5000", LLAMAMAN_NODE_SECRET=SECRET
    )
    beta = NodeRegistry(beta_settings, named_box.db, clock=lambda: now[0])
    beta.info_provider = lambda: {"models_on_disk": ["big-one"], "inflight": 4}
    await beta.beat()
    await named_box.nodes.beat()

    async with api_client(named_box) as client:
        listed = {n["name"]: n for n in (await client.get("/api/nodes")).json()["nodes"]}
        assert (listed["beta"]["alive"], listed["beta"]["self"]) == (True, False)
        assert (listed["beta"]["models_on_disk"], listed["beta"]["inflight"]) == (["big-one"], 4)

        now[0] -= 60  # beta's last heartbeat, a minute ago
        await beta.beat()
        await named_box.nodes.beat()
        listed = {n["name"]: n for n in (await client.get("/api/nodes")).json()["nodes"]}

    assert listed["beta"]["alive"] is False and listed["beta"]["seconds_since_heartbeat"] >= 59
    assert listed["alpha"]["alive"] is True


@pytest.mark.parametrize("surface", ["main", "proxy"])
async def test_inference_keys_and_strangers_cannot_read_the_nodes(box: Any, surface: str) -> None:
    weak = await inference_headers(box)
    async with asgi(box, surface) as client:
        assert (await client.get("/api/nodes", headers=weak)).status_code == 403
        assert (await client.get("/api/nodes")).status_code in (401, 403)
        if surface == "main":
            strong = await admin_headers(box)
            assert (await client.get("/api/nodes", headers=strong)).status_code == 200
