"""The entry node's own count of the requests it has at each node, which outruns heartbeats."""

from __future__ import annotations

from pathlib import Path

import pytest

from llamaman.cluster.forward import Cluster, OtherKindNext, RemoteLease
from llamaman.cluster.nodes import NodeRegistry, NodeView
from llamaman.cluster.peers import PeerDirectory
from llamaman.cluster.routing import Kind, Target
from llamaman.core.config import Settings
from llamaman.core.db import Database


def cluster(tmp_path: Path) -> Cluster:
    settings = Settings(
        DATA_DIR=str(tmp_path),
        MODELS_DIR=str(tmp_path),
        LLAMAMAN_NODE_NAME="n1",
        LLAMAMAN_NODE_URL="http://127.0.0.1:5000",
        LLAMAMAN_NODE_SECRET="s" * 32,
    )
    db = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    nodes = NodeRegistry(settings, db, clock=lambda: 100.0)
    nodes._views = {
        "n2": NodeView("n2", "http://n2:5000", 100.0, 0.0, True, {"inflight": 1, "queued": 0}),
        "n3": NodeView(
            "n3", "http://n3:5000", 100.0, 0.0, True, {"inflight": 0, "proxy_url": "http://n3:42069"}
        ),
    }
    return Cluster(settings, nodes, PeerDirectory(db, None))  # type: ignore[arg-type]


async def no_local() -> object:
    raise AssertionError("not used")


def inflight(c: Cluster) -> dict[str, int]:
    return {s.name: s.info["inflight"] for s in c.node_states()}


async def test_requests_sent_to_a_node_count_there_until_released_or_failed_over(tmp_path: Path) -> None:
    c = cluster(tmp_path)
    targets = [Target(Kind.NODE, "n2", "http://n2:5000"), Target(Kind.NODE, "n3", "http://n3:5000")]
    leases = [RemoteLease(c, "qwen", targets, no_local) for _ in range(3)]  # type: ignore[arg-type]
    # Its heartbeat said 1; three are on their way: the larger figure stands.
    assert inflight(c) == {"n2": 3, "n3": 0}
    assert await leases[0].fail_over("connection refused")
    assert leases[0].target.name == "n3"
    # n2 is skipped until its next heartbeat; the moved request counts at n3.
    assert inflight(c) == {"n3": 1}
    for lease in leases:
        lease.release()
    c.nodes._views["n2"] = NodeView("n2", "http://n2:5000", 101.0, 0.0, True, {"inflight": 1, "queued": 0})
    c.nodes.version += 1  # as a heartbeat's read of the table does
    # Back to what the heartbeats say.
    assert inflight(c) == {"n2": 1, "n3": 0}


def test_a_node_that_names_its_proxy_port_is_reached_there(tmp_path: Path) -> None:
    urls = {s.name: s.url for s in cluster(tmp_path).node_states()}
    assert urls == {"n2": "http://n2:5000", "n3": "http://n3:42069"}


def test_a_node_offers_its_proxy_port_on_the_host_other_nodes_reach_it_by(tmp_path: Path) -> None:
    from llamaman.services import _proxy_url

    def settings(url: str, proxy_port: int) -> Settings:
        return Settings(
            DATA_DIR=str(tmp_path), MODELS_DIR=str(tmp_path), LLAMAMAN_NODE_NAME="n1",
            LLAMAMAN_NODE_URL=url, LLAMAMAN_NODE_SECRET="s" * 32, LLAMAMAN_PROXY_PORT=proxy_port,
        )  # fmt: skip

    assert _proxy_url(settings("http://10.0.0.2:5000", 42069)) == "http://10.0.0.2:42069"
    assert _proxy_url(settings("http://[fd00::2]:5000/", 42069)) == "http://[fd00::2]:42069"
    assert _proxy_url(settings("http://10.0.0.2:5000", 0)) is None  # no proxy port: the main one


def test_a_plan_is_kept_between_heartbeats_and_made_again_when_one_changes_the_picture(
    tmp_path: Path,
) -> None:
    c = cluster(tmp_path)
    for name in ("n2", "n3"):
        v = c.nodes._views[name]
        info = {**v.info, "models_resident": ["qwen"]}
        c.nodes._views[name] = NodeView(name, v.url, 100.0, 0.0, True, info)
    first = c.targets("qwen", None, {})
    assert [t.name for t in first] == ["n3", "n2"]  # the idle one first
    first.clear()  # a caller's changes to its list do not reach the kept plan
    assert [t.name for t in c.targets("qwen", None, {})] == ["n3", "n2"]
    # A heartbeat: n3 is now the busy one.
    c.nodes._views["n3"] = NodeView(
        "n3", "http://n3:5000", 101.0, 0.0, True, {"inflight": 5, "models_resident": ["qwen"]}
    )
    c.nodes.version += 1
    assert [t.name for t in c.targets("qwen", None, {})] == ["n2", "n3"]
    # An alias added meanwhile is honoured at once, without a heartbeat.
    assert c.targets("q", None, {}) == []
    assert [t.name for t in c.targets("q", None, {"q": "qwen"})] == ["n2", "n3"]


async def test_a_lease_kept_to_one_kind_hands_back_the_places_of_another_kind(tmp_path: Path) -> None:
    c = cluster(tmp_path)
    peer = Target(Kind.PEER, "swap", "http://swap:8080")
    targets = [Target(Kind.NODE, "n2", "http://n2:5000"), Target(Kind.NODE, "n3", "http://n3:5000"), peer]
    lease = RemoteLease(c, "qwen", targets, no_local, one_kind=True)  # type: ignore[arg-type]
    assert await lease.fail_over("connection refused") and lease.target.name == "n3"
    with pytest.raises(OtherKindNext) as nxt:
        await lease.fail_over("answered 500")
    assert nxt.value.rest == [peer]
    assert c._sent == {}  # neither node still counts the request
    lease.release()
