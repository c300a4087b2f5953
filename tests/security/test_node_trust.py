"""The node secret lets one node forward a model request to another without the caller's key. A
caller who learns it, or guesses at it, gets nothing more: not a management route, not a key's
rights by another spelling, not trust on a box that is no node."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from llamaman.app import LlamaMan
from llamaman.cluster.forward import NODE_HEADER, VIA_HEADER
from llamaman.core.config import Settings
from tests.helpers import asgi, inference_headers

pytestmark = pytest.mark.auth

SECRET = "node-secret-shared-by-the-boxes-0123"
CHAT = {"model": "tiny-a", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
MANAGEMENT = [
    ("GET", "/api/nodes"),
    ("GET", "/api/peers"),
    ("POST", "/api/peers"),
    ("PUT", "/api/peers/evil"),
    ("DELETE", "/api/peers/evil"),
    ("GET", "/api/workers"),
    ("GET", "/api/keys"),
    ("POST", "/api/instances"),
]


@pytest.fixture
async def node(make_settings: Callable[..., Settings]) -> AsyncIterator[LlamaMan]:
    svc = LlamaMan(
        make_settings(
            LLAMAMAN_NODE_NAME="n1", LLAMAMAN_NODE_URL="http://127.0.0.1:1", LLAMAMAN_NODE_SECRET=SECRET,
            LLAMAMAN_NODE_HEARTBEAT=30, LLAMAMAN_NODE_TIMEOUT=60,
        )
    )  # fmt: skip
    await svc.start()
    try:
        yield svc
    finally:
        await svc.stop()


@pytest.mark.parametrize("surface", ["proxy", "main"])
async def test_the_secret_opens_no_management_route_alone_or_beside_an_inference_key(
    node: LlamaMan, surface: str
) -> None:
    weak = await inference_headers(node)
    peer = {"name": "evil", "base_url": "http://evil.example/v1"}
    async with asgi(node, surface) as client:
        for method, path in MANAGEMENT:
            body: dict[str, Any] | None = peer if method in ("POST", "PUT") else None
            r = await client.request(method, path, json=body, headers={NODE_HEADER: SECRET, VIA_HEADER: "n2"})
            assert r.status_code in (401, 403), (surface, method, path, r.status_code)
            r = await client.request(method, path, json=body, headers={**weak, NODE_HEADER: SECRET})
            assert r.status_code == 403, (surface, method, path, r.status_code)
    await node.peers.reload()
    assert node.peers.views() == []  # no peer was made


@pytest.mark.parametrize("surface", ["proxy", "main"])
async def test_near_misses_of_the_secret_are_no_credential(node: LlamaMan, surface: str) -> None:
    tries: list[dict[str, str]] = [
        {NODE_HEADER: SECRET[:-1]},
        {NODE_HEADER: SECRET + " "},
        {NODE_HEADER: SECRET.upper()},
        {NODE_HEADER: f"{SECRET},{SECRET}"},
        {"Authorization": f"Bearer {SECRET}"},  # the secret is not a key
        {"x-llamaman-node": SECRET},
        {VIA_HEADER: "n1"},  # naming a node proves nothing
    ]
    async with asgi(node, surface) as client:
        for headers in tries:
            r = await client.post("/v1/chat/completions", json=CHAT, headers=headers)
            assert r.status_code == 401, (surface, headers, r.status_code)
        # In the query string it is nothing either.
        r = await client.post(f"/v1/chat/completions?{NODE_HEADER}={SECRET}", json=CHAT)
        assert r.status_code == 401


async def test_a_box_that_is_no_node_trusts_no_secret(make_settings: Callable[..., Settings]) -> None:
    # The secret set but no node name: nothing forwards here, so nothing is trusted.
    svc = LlamaMan(make_settings(LLAMAMAN_NODE_SECRET=SECRET))
    await svc.start()
    try:
        async with asgi(svc, "proxy") as client:
            r = await client.post("/v1/chat/completions", json=CHAT, headers={NODE_HEADER: SECRET})
            assert r.status_code == 401
    finally:
        await svc.stop()
