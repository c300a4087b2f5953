"""Three LlamaMan nodes on one throwaway MariaDB, each with its own folders and ports, a real uvicorn
on its main port and real llama-servers: node 1 serves a model only nodes 2 and 3 have, through the
official clients; the node that served it is stopped and the other one serves within 5 seconds,
answering the same.

Then every node restarts: each brings back only its own instances, and no model runs twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import ollama
import openai
import pytest
from sqlmodel import select

from llamaman.app import LlamaMan, create_app
from llamaman.core.config import Settings
from llamaman.core.exchange import Exchange
from llamaman.core.state import InstanceState
from llamaman.core.tables import Instance
from llamaman.instances.launch import LaunchSettings
from llamaman.proxy.app import ProxyServer
from llamaman.testing.mariadb import MariaDBServer
from llamaman.testing.netports import free_block
from llamaman.testing.tiny_gguf import write_tiny_model
from tests.helpers import fresh_mysql_database

pytestmark = pytest.mark.mysql

SECRET = "three-nodes-share-this-secret"
SHARED = "shared"
PROMPT = [{"role": "user", "content": "Say something."}]


@dataclass
class RunningNode:
    name: str
    svc: LlamaMan
    server: ProxyServer
    seen: list[Exchange]
    settings: Settings
    port: int

    @property
    def url(self) -> str:
        return self.server.url


async def start_node(name: str, settings: Settings, port: int) -> RunningNode:
    svc = LlamaMan(settings)
    await svc.start()
    server = ProxyServer(create_app(svc, manage_lifecycle=False), "127.0.0.1", port)
    await server.start()
    seen: list[Exchange] = []
    svc.relay.add_observer(seen.append)
    return RunningNode(name, svc, server, seen, settings, port)


@pytest.fixture
async def nodes(
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    llama_server_bin: str,
    mariadb_server: MariaDBServer,
) -> AsyncIterator[dict[str, RunningNode]]:
    running: dict[str, RunningNode] = {}
    with fresh_mysql_database(mariadb_server) as url:
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
                running[name] = await start_node(name, settings, port)
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


async def test_after_every_node_restarts_each_brings_back_only_its_own_instances(
    nodes: dict[str, RunningNode],
) -> None:
    n1 = nodes["n1"]
    _, key = await n1.svc.auth.keys.create("client")
    oai = openai.AsyncOpenAI(base_url=f"{n1.url}/v1", api_key=key, max_retries=0, timeout=120)
    for model in ("solo", SHARED):
        await oai.chat.completions.create(model=model, messages=PROMPT, max_tokens=4, temperature=0)
    # The shared model is loaded where n1 sent it; the other node that has it forwards there rather
    # than load a second copy, so a person launches it on that node too.
    for name in ("n2", "n3"):
        svc = nodes[name].svc
        if not svc.supervisor.list():
            m = await svc.supervisor.launch(LaunchSettings(model_path=f"{SHARED}.gguf"))
            state = await m.proc.wait_for({InstanceState.HEALTHY, InstanceState.FAILED}, timeout=60)
            assert state == InstanceState.HEALTHY
    before = {
        name: sorted(m.record.model_name for m in node.svc.supervisor.list()) for name, node in nodes.items()
    }
    assert before == {"n1": ["solo"], "n2": [SHARED], "n3": [SHARED]}

    for node in list(nodes.values()):
        await stop(node)
    # All three start together again on the same database.
    restarted = await asyncio.gather(*(start_node(n.name, n.settings, n.port) for n in nodes.values()))
    nodes.update({n.name: n for n in restarted})
    after = {
        n.name: sorted((m.record.model_name, m.record.node) for m in n.svc.supervisor.list())
        for n in restarted
    }
    assert after == {"n1": [("solo", "n1")], "n2": [(SHARED, "n2")], "n3": [(SHARED, "n3")]}
    # The rows in the shared table agree: one per node and model, none without an owner.
    with n1.svc.db.session() as s:
        rows = s.exec(select(Instance)).all()
    owners = sorted((r.node, r.model_name) for r in rows if r.desired_running)
    assert owners == [("n1", "solo"), ("n2", SHARED), ("n3", SHARED)]
