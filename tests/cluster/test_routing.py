"""Where a request goes among this node, the other nodes and the peers: pure decisions."""

from __future__ import annotations

from llamaman.cluster.routing import (
    Here,
    Kind,
    NodeState,
    PeerState,
    free_memory,
    name_matches,
    passes_filter,
    plan,
)

GB = 1 << 30


def node(
    name: str, *, disk: tuple[str, ...] = (), resident: tuple[str, ...] = (), **info: object
) -> NodeState:
    return NodeState(
        name, f"http://{name}:5000", {"models_on_disk": list(disk), "models_resident": list(resident), **info}
    )


def names(targets: list) -> list[str]:
    return [t.name for t in targets]


def test_a_model_resident_elsewhere_goes_to_the_least_loaded_node_first() -> None:
    nodes = [
        node("n2", resident=("qwen",), inflight=3),
        node("n3", resident=("qwen",), inflight=1),
        node("n4", disk=("qwen",), memory={"free": 90 * GB}),
    ]
    targets = plan("qwen", Here("n1", on_disk=False, resident=False), nodes)
    assert names(targets) == ["n3", "n2", "n4"]
    assert all(t.kind is Kind.NODE for t in targets)
    assert targets[0].url == "http://n3:5000"


def test_this_node_wins_a_tie_so_a_request_takes_no_needless_hop() -> None:
    here = Here("n1", on_disk=True, resident=True, inflight=1)
    targets = plan("qwen", here, [node("n2", resident=("qwen",), inflight=1)])
    assert [t.kind for t in targets] == [Kind.SELF, Kind.NODE]


def test_a_busier_local_copy_loses_to_an_idle_remote_one() -> None:
    here = Here("n1", on_disk=True, resident=True, inflight=4)
    assert names(plan("qwen", here, [node("n2", resident=("qwen",), inflight=0)])) == ["n2", "n1"]


def test_a_node_at_capacity_is_no_longer_resident_with_room() -> None:
    full = node("n2", resident=("qwen",), disk=("qwen",), inflight=2, capacity=2)
    idle_loader = node("n3", disk=("qwen",), memory=10 * GB)
    targets = plan("qwen", None, [full, idle_loader])
    # A full node still has the file: it comes among those that would load it, by free memory.
    assert names(targets) == ["n3", "n2"]


def test_a_model_resident_nowhere_goes_where_the_file_is_and_memory_is_most_free() -> None:
    nodes = [
        node("n2", disk=("qwen",), memory={"free": 8 * GB}),
        node("n3", disk=("qwen",), memory=[{"free": 20 * GB}, {"free": 4 * GB}]),
        node("n4", disk=("other",), memory={"free": 500 * GB}),
    ]
    here = Here("n1", on_disk=True, resident=False, free_memory=16 * GB)
    assert names(plan("qwen", here, nodes)) == ["n3", "n1", "n2"]


def test_a_resident_copy_anywhere_comes_before_any_load() -> None:
    here = Here("n1", on_disk=True, resident=False, free_memory=500 * GB)
    assert names(plan("qwen", here, [node("n2", resident=("qwen",), inflight=9)])) == ["n2", "n1"]


def test_peers_come_last_and_only_when_their_list_and_filter_have_the_model() -> None:
    peers = [
        PeerState("swap", "http://swap:8080", models=("qwen", "llama"), model_filter=("qw*",)),
        PeerState("box", "http://box:11434", models=("llama",)),
        PeerState("any", "http://any:8080", models=("qwen",), api_key="k"),
    ]
    targets = plan("qwen", Here("n1", on_disk=False, resident=False), [node("n2", disk=("qwen",))], peers)
    assert names(targets) == ["n2", "any", "swap"]
    assert targets[1].kind is Kind.PEER and targets[1].api_key == "k"
    assert names(plan("llama", None, [], peers)) == ["box"]  # swap's filter keeps llama out


def test_a_model_nobody_has_gives_no_target() -> None:
    assert plan("ghost", Here("n1", on_disk=False, resident=False), [node("n2", disk=("qwen",))]) == []


def test_names_match_as_the_proxy_matches_them() -> None:
    assert name_matches("qwen:latest", "qwen")
    assert name_matches("Qwen", "qwen.gguf")
    assert name_matches("org/qwen", "qwen")
    assert name_matches("qwen", "models/qwen")
    assert not name_matches("qwen", "qwen2")
    assert not name_matches("", "qwen")


def test_an_alias_is_resolved_before_the_nodes_are_asked() -> None:
    targets = plan("chat:latest", None, [node("n2", disk=("qwen",))], aliases={"chat": "qwen"})
    assert names(targets) == ["n2"]


def test_nodes_and_peers_that_just_failed_are_skipped() -> None:
    nodes = [node("n2", resident=("qwen",)), node("n3", disk=("qwen",))]
    peers = [PeerState("p", "http://p", models=("qwen",))]
    assert names(plan("qwen", None, nodes, peers, skip=frozenset({"n2", "p"}))) == ["n3"]


def test_a_node_without_a_url_cannot_be_reached_and_is_left_out() -> None:
    assert plan("qwen", None, [NodeState("n2", "", {"models_resident": ["qwen"]})]) == []


def test_a_filter_is_case_insensitive_and_empty_means_everything() -> None:
    assert passes_filter("Qwen-7B", ("qwen*",))
    assert passes_filter("anything", ())
    assert not passes_filter("llama", ("qwen*", "mistral*"))


def test_free_memory_reads_the_shapes_a_heartbeat_may_carry() -> None:
    assert free_memory({"memory": 5}) == 5
    assert free_memory({"memory": {"free": 7}}) == 7
    assert free_memory({"memory": {"devices": [{"free": 1}, {"free": 2}]}}) == 3
    assert free_memory({"memory": [{"free": 4}, {"free_bytes": 6}]}) == 10
    assert free_memory({"memory": "lots"}) == 0
    assert free_memory({}) == 0


def test_a_full_local_copy_sends_work_to_another_node_that_can_load_the_model() -> None:
    # Every slot here is taken: a node with the file starts a second copy rather than the request
    # queueing behind the first.
    here = Here("n1", on_disk=True, resident=True, inflight=4, capacity=4, room=False)
    targets = plan("qwen", here, [node("n2", disk=("qwen",), memory={"free": 8 * GB})])
    assert names(targets) == ["n2", "n1"]


def test_a_model_named_full_in_a_heartbeat_has_no_room_there() -> None:
    busy = node("n2", resident=("qwen",), disk=("qwen",), models_full=["qwen"], capacity={"qwen": 4})
    free = node("n3", resident=("qwen",), disk=("qwen",), capacity={"qwen": 4}, inflight=3)
    assert names(plan("qwen", None, [busy, free])) == ["n3", "n2"]


def test_when_every_copy_is_full_a_request_waits_where_fewest_wait_per_slot() -> None:
    here = Here("n1", on_disk=True, resident=True, inflight=12, capacity=4, room=False)
    nodes = [
        node("n2", resident=("qwen",), disk=("qwen",), capacity={"qwen": 4}, inflight=4, queued=2),
        node("n3", resident=("qwen",), disk=("qwen",), capacity={"qwen": 8}, inflight=8, queued=2),
    ]
    # Per slot: n1 12/4 = 3, n2 6/4 = 1.5, n3 10/8 = 1.25.
    assert names(plan("qwen", here, nodes)) == ["n3", "n2", "n1"]
