"""Three LlamaMan nodes on one throwaway MariaDB, each with its own folders and ports, a real uvicorn
on its main port and real llama-servers: node 1 serves a model only nodes 2 and 3 have, through the
official clients; the node that served it is stopped and the other one serves within 5 seconds,
answering the same.

The heartbeat's ``info`` is filled here from each node's library and router (what the nodes table
carries), so the test holds whatever else a heartbeat reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ollama
import openai
import pytest

from llamaman.app import LlamaMan, create_app
from llamaman.core.config import Settings
from llamaman.core.exchange import Exchange
from llamaman.proxy.app import ProxyServer
from llamaman.testing.mariadb import MariaDBServer, mariadb_available, mysql_required
from llamaman.testing.netports import free_block
from llamaman.testing.tiny_gguf import write_tiny_model
from tests.core.test_storage import fresh_mysql_database

pytestmark = pytest.mark.mysql

SECRET = "three-nodes-share-this-secret"
SHARED = "shared"
PROMPT = [{"role": "user", "content": "Say something."}]


@pytest.fixture(scope="module")
def mariadb() -> Iterator[MariaDBServer]:
    if not mariadb_available() and not mysql_required():
        pytest.skip("no MariaDB server here (install mariadb-server or set LLAMAMAN_TEST_MYSQL_URL)")
    server = MariaDBServer.start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class RunningNode:
    name: str
    svc: LlamaMan
    server: ProxyServer
    seen: list[Exchange]

    @property
    def url(self) -> str:
        return self.server.url


def heartbeat_info(svc: LlamaMan) -> Callable[[], dict[str, Any]]:
    def info() -> dict[str, Any]:
        models = [e for e in svc.library.models if e.launchable]
        return {
            "models_on_disk": [e.name for e in models],
            "models_resident": [e.name for e in models if svc.router.status(e) == "loaded"],
            "inflight": sum(s.inflight for s in svc.router.slots.values()),
            "memory": {"free": 1 << 34},  # equal everywhere: the name decides a tie
        }

    return info


@pytest.fixture
async def nodes(
    tmp_path: Path, make_settings: Callable[..., Settings], llama_server_bin: str, mariadb: MariaDBServer
) -> AsyncIterator[dict[str, RunningNode]]:
    running: dict[str, RunningNode] = {}
    with fresh_mysql_database(mariadb) as url:
        try:
            for name, models in (("n1", ("solo",)), ("n2", (SHARED,)), ("n3", (SHARED,))):
                folder = tmp_path / name
                for model in models:
                    write_tiny_model(folder / "models" / f"{model}.gguf", "B")
                port = free_block(1, 43000 + len(running) * 50)
                settings = make_settings(
                    MODELS_DIR=str(folder / "models"), DATA_DIR=str(folder / "data"), DATABASE_URL=url,
                    LLAMA_SERVER_BIN=llama_server_bin, LLAMAMAN_NODE_NAME=name,
                    LLAMAMAN_NODE_URL=f"http://127.0.0.1:{port}", LLAMAMAN_NODE_SECRET=SECRET,
                    LLAMAMAN_NODE_HEARTBEAT=0.5, LLAMAMAN_NODE_TIMEOUT=2,
                )  # fmt: skip
                svc = LlamaMan(settings)
                svc.nodes.info_provider = heartbeat_info(svc)
                await svc.start()
                server = ProxyServer(create_app(svc, manage_lifecycle=False), "127.0.0.1", port)
                await server.start()
                seen: list[Exchange] = []
                svc.relay.add_observer(seen.append)
                running[name] = RunningNode(name, svc, server, seen)
            entry = running["n1"].svc
            for _ in range(100):
                if {v.name for v in entry.nodes.others()} == {"n2", "n3"}:
                    break
                await asyncio.sleep(0.1)
            yield running
        finally:
            for node in running.values():
                with contextlib.suppress(Exception):
                    await node.server.stop()
                with contextlib.suppress(Exception):
                    await node.svc.stop()


async def stop(node: RunningNode) -> None:
    await node.server.stop()
    await node.svc.stop()


async def test_a_model_only_other_nodes_have_is_served_through_any_node_and_fails_over(
    nodes: dict[str, RunningNode],
) -> None:
    n1 = nodes["n1"]
    _, key = await n1.svc.auth.keys.create("client")
    oai = openai.AsyncOpenAI(base_url=f"{n1.url}/v1", api_key=key, max_retries=0, timeout=120)

    listed = {m.id: m.model_extra for m in (await oai.models.list()).data}
    assert sorted(listed[SHARED]["nodes"]) == ["n2", "n3"] and listed["solo"]["nodes"] == ["n1"]

    first = await oai.chat.completions.create(model=SHARED, messages=PROMPT, max_tokens=8, temperature=0)
    served_by = n1.seen[-1].node
    assert served_by in ("n2", "n3") and first.choices[0].message.content
    assert n1.seen[-1].identity is not None and n1.seen[-1].identity.name == "client"
    assert nodes[served_by].seen == []  # recorded at the entry node only

    # The Ollama surface goes to the same node, the request as sent.
    client = ollama.AsyncClient(host=n1.url, headers={"Authorization": f"Bearer {key}"})
    tags = {m.model: m for m in (await client.list()).models}  # the official client validates them
    assert tags[f"{SHARED}:latest"].details is not None and "solo:latest" in tags
    reply = await client.chat(model=SHARED, messages=PROMPT, options={"num_predict": 8, "temperature": 0})
    assert reply.message.content and n1.seen[-1].node in ("n2", "n3")

    # The other node, asked directly, answers the same (and has the model resident from now on).
    other = "n3" if served_by == "n2" else "n2"
    direct = openai.AsyncOpenAI(base_url=f"{nodes[other].url}/v1", api_key=key, max_retries=0, timeout=120)
    alone = await direct.chat.completions.create(model=SHARED, messages=PROMPT, max_tokens=8, temperature=0)
    assert alone.choices[0].message.content == first.choices[0].message.content

    # The serving node goes away: the other one serves within 5 seconds.
    await stop(nodes[served_by])
    started = time.monotonic()
    again = await oai.chat.completions.create(model=SHARED, messages=PROMPT, max_tokens=8, temperature=0)
    assert time.monotonic() - started < 5
    assert n1.seen[-1].node == other
    assert again.choices[0].message.content == first.choices[0].message.content

    # Once its heartbeat is stale the stopped node leaves the lists as well as the rotation.
    await asyncio.sleep(n1.svc.settings.node_timeout + n1.svc.settings.node_heartbeat)
    listed = {m.id: m.model_extra for m in (await oai.models.list()).data}
    assert listed[SHARED]["nodes"] == [other]
