"""Two nodes' registries on one SQLite file, on a clock the test moves: what each sees of the
other, when a silent one leaves the rotation, and when the UI hears of it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from llamaman.cluster.nodes import NodeRegistry
from llamaman.core.config import Settings
from llamaman.core.db import Database
from llamaman.core.events import Event, EventBus

SECRET = "s" * 16


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'shared.db'}")
    database.migrate()
    try:
        yield database
    finally:
        database.dispose()


@pytest.fixture
def node(
    make_settings: Callable[..., Settings], db: Database
) -> Callable[..., tuple[NodeRegistry, list[Event]]]:
    clock = Clock()

    def make(name: str, info: dict[str, Any] | None = None) -> tuple[NodeRegistry, list[Event]]:
        events = EventBus()
        seen: list[Event] = []
        events.listen(seen.append, "nodes.")
        settings = make_settings(
            LLAMAMAN_NODE_NAME=name,
            LLAMAMAN_NODE_URL=f"http://{name}.lan:5000",
            LLAMAMAN_NODE_SECRET=SECRET,
            LLAMAMAN_NODE_TIMEOUT=4,
        )
        registry = NodeRegistry(settings, db, clock=clock, events=events)
        registry.info_provider = lambda: dict(info or {})
        return registry, seen

    make.clock = clock  # type: ignore[attr-defined]
    return make


async def test_each_node_sees_the_other_with_what_its_heartbeat_said(node: Any) -> None:
    a, _ = node("alpha", {"models_on_disk": ["tiny-a"], "inflight": 2, "memory": [{"id": "cpu"}]})
    resident = [{"name": "tiny-b", "instance": "i1", "state": "healthy"}]
    b, _ = node(
        "beta",
        {
            "models_on_disk": ["tiny-b"],
            "model_sizes": {"tiny-b": 42},
            "models_resident": ["tiny-b"],
            "resident": resident,
        },
    )

    await a.beat()
    await b.beat()
    await a.beat()

    assert [v.name for v in a.nodes()] == ["alpha", "beta"]
    [other] = a.others()
    assert (other.name, other.url, other.alive) == ("beta", "http://beta.lan:5000", True)
    assert (other.models_on_disk, other.models_resident) == (["tiny-b"], ["tiny-b"])
    assert (other.model_sizes, other.resident) == ({"tiny-b": 42}, resident)
    [seen_by_b] = b.others()
    assert (seen_by_b.name, seen_by_b.inflight, seen_by_b.memory) == ("alpha", 2, [{"id": "cpu"}])


async def test_a_node_silent_longer_than_the_timeout_leaves_the_rotation_and_comes_back(node: Any) -> None:
    a, _ = node("alpha")
    b, _ = node("beta")
    await b.beat()
    await a.beat()

    node.clock.now += 3.9  # within LLAMAMAN_NODE_TIMEOUT (4 s)
    await a.beat()
    assert [v.name for v in a.others()] == ["beta"]

    node.clock.now += 0.2  # beta's last beat is now 4.1 s old
    await a.beat()
    assert a.others() == []
    assert [(v.name, v.alive) for v in a.nodes()] == [("alpha", True), ("beta", False)]
    # Between beats too: liveness is judged against the clock whenever someone asks.
    node.clock.now += 100
    assert [v.alive for v in a.nodes()] == [True, False]

    await b.beat()
    await a.beat()
    assert [v.name for v in a.others()] == ["beta"]


async def test_the_ui_hears_when_a_node_comes_goes_or_changes_and_not_otherwise(node: Any) -> None:
    a, seen = node("alpha")
    info: dict[str, Any] = {"inflight": 0}
    b, _ = node("beta")
    b.info_provider = lambda: dict(info)
    await b.beat()

    await a.beat()
    assert [e.data["alive"] for e in seen] == [["alpha", "beta"]]
    await a.beat()
    assert len(seen) == 1  # nothing new

    info["inflight"] = 3
    await b.beat()
    await a.beat()
    assert len(seen) == 2

    node.clock.now += 5
    await a.beat()
    assert seen[-1].data["alive"] == ["alpha"]


async def test_a_standalone_box_writes_no_row_and_lists_no_node(
    make_settings: Callable[..., Settings], db: Database
) -> None:
    box = NodeRegistry(make_settings(), db)

    await box.beat()
    box.start()
    await box.stop()

    assert not box.enabled
    assert box.nodes() == []


async def test_an_async_info_provider_is_awaited(node: Any) -> None:
    a, _ = node("alpha")

    async def info() -> dict[str, Any]:
        return {"version": "9.9"}

    a.info_provider = info
    await a.beat()

    assert a.nodes()[0].info == {"version": "9.9"}
