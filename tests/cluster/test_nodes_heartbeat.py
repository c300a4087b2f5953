"""What a node's heartbeat tells the others: its models under the names the endpoints list, the
models it has in memory, each device's memory, and its requests running and waiting."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from llamaman.app import LlamaMan
from llamaman.cluster.heartbeat_info import HeartbeatInfo, listed_names
from llamaman.core.config import Settings
from llamaman.core.exchange import Exchange
from llamaman.core.state import InstanceState
from llamaman.instances.launch import LaunchSettings
from llamaman.library.catalog import ModelLibrary
from llamaman.testing.tiny_gguf import write_tiny_model


def test_models_are_named_as_the_endpoints_list_them_and_a_shared_stem_keeps_its_folder(
    tmp_path: Path,
) -> None:
    write_tiny_model(tmp_path / "solo.gguf", "A")
    write_tiny_model(tmp_path / "org1" / "twin.gguf", "A")
    write_tiny_model(tmp_path / "org2" / "twin.gguf", "B")
    library = ModelLibrary(tmp_path)

    names = listed_names(library.scan())

    assert sorted(names) == ["org1/twin", "org2/twin", "solo"]
    assert names["org2/twin"].rel_path == "org2/twin.gguf"


async def test_the_heartbeat_names_resident_models_and_counts_running_and_waiting_requests(
    make_settings: Callable[..., Settings], fake_server_bin: Callable[[str], str]
) -> None:
    app = LlamaMan(make_settings(LLAMA_SERVER_BIN=fake_server_bin("ok")))
    await app.start()
    try:
        info = HeartbeatInfo(app.library, app.supervisor, app.router, app.relay)
        before = await info()
        assert before["models_resident"] == [] and (before["inflight"], before["queued"]) == (0, 0)
        assert {"tiny-a", "tiny-b"} <= set(before["models_on_disk"])
        assert before["model_sizes"]["tiny-a"] == app.library.find("tiny-a.gguf").size_bytes  # type: ignore[union-attr]

        m = await app.supervisor.launch(
            LaunchSettings(model_path="tiny-a.gguf", ctx_size=512, max_concurrent=2)
        )
        assert await m.proc.wait_for({InstanceState.HEALTHY, InstanceState.FAILED}, timeout=30) == (
            InstanceState.HEALTHY
        )
        running, waiting, also_running = (Exchange("tiny-a", "/v1/chat/completions") for _ in range(3))
        app.relay.inflight.running(running)
        app.relay.inflight.running(also_running)
        app.relay.inflight.queued(waiting)

        now = info.build()
        held = app.router.usage_of(m).get("cpu", 0)
        # Both of its slots taken: other nodes read the model as full here.
        leases = [await app.router.acquire("tiny-a") for _ in range(2)]
        full = info.build()
        for lease in leases:
            lease.release()
    finally:
        await app.stop()

    assert now["models_resident"] == ["tiny-a"]
    assert now["resident"] == [{"name": "tiny-a", "instance": m.id, "state": "healthy"}]
    assert (now["inflight"], now["queued"]) == (2, 1)
    ram = next(d for d in now["memory"] if d["id"] == "cpu")
    assert 0 < ram["free"] <= ram["total"] and ram["limit"] > 0
    assert ram["used_by_models"] == held > 0
    assert now["max_models"] == app.runtime.current.max_models and now["version"]
    assert now["capacity"] == {"tiny-a": 2} and now["models_full"] == []
    assert full["models_full"] == ["tiny-a"]
    assert "proxy_url" not in now  # none given: other nodes use LLAMAMAN_NODE_URL
