"""Load stages from llama-server's log lines, and the fraction that leans on past load times."""

from __future__ import annotations

from llamaman.core.events import EventBus
from llamaman.instances.load_progress import CAP, LoadTracker, fraction, stage_of

# Lines as the xllamacpp build prints them while it loads (the other builds print these too).
LOG = [
    "0.00.012.149 I srv          init: loading model",
    "0.00.026.567 I cmn          init: llama threadpool init, n_threads = 2",
    "0.00.388.898 I srv    load_model: initializing, n_slots = 1, n_ctx_slot = 512, kv_unified = 'false'",
    "0.00.390.754 I srv          init: model loaded",
]


def test_each_stage_of_a_load_is_read_from_its_log_line_in_order() -> None:
    stages = [stage_of(line) for line in LOG]
    assert [s[0] for s in stages if s] == [
        "reading model",
        "loading tensors",
        "creating context",
        "starting server",
    ]
    floors = [s[1] for s in stages if s]
    assert floors == sorted(floors) and floors[-1] <= CAP
    assert stage_of("0.00.010.411 I srv  init_listene: The UI is disabled") is None
    assert stage_of("llama_model_loader: loaded meta data with 30 key-value pairs") == ("reading model", 0.05)
    assert stage_of("load_tensors: offloading 24 repeating layers to GPU")[0] == "loading tensors"  # type: ignore[index]


def test_a_known_past_load_time_moves_the_fraction_with_the_clock_but_never_to_the_end() -> None:
    assert fraction(0.2, elapsed=5, expected=None) == 0.2
    assert fraction(0.2, elapsed=5, expected=10) == 0.5
    assert fraction(0.8, elapsed=5, expected=10) == 0.8  # the log is further than the clock says
    assert fraction(0.2, elapsed=30, expected=10) == CAP  # slower than last time: not done until it is


class _Record:
    model_path, model_name = "m.gguf", "m"


class _Settings:
    ctx_size, n_gpu_layers, extra_args = 4096, -1, ""


class _Instance:
    record, settings = _Record(), _Settings()


def test_the_tracker_publishes_stage_changes_and_remembers_how_long_a_load_took() -> None:
    bus = EventBus()
    tracker = LoadTracker(bus, {"i1": _Instance()})
    tracker.start()
    seen: list[tuple[str, float]] = []
    bus.listen(lambda ev: seen.append((ev.data["stage"], ev.data["fraction"])), "instance.progress")

    bus.publish("instance.state", id="i1", old="stopped", new="starting")
    for line in LOG:
        bus.publish("instance.log", id="i1", line=line)
    bus.publish("instance.log", id="i1", line=LOG[0])  # a stage never goes back
    assert tracker.progress("i1") == {"stage": "starting server", "fraction": 0.95}
    bus.publish("instance.state", id="i1", old="starting", new="healthy")

    assert [s for s, _ in seen] == [
        "starting process", "reading model", "loading tensors", "creating context", "starting server",
        "loaded",
    ]  # fmt: skip
    assert seen[-1] == ("loaded", 1.0)
    assert tracker.progress("i1") is None
    assert list(tracker.past) == ["m.gguf|ctx=4096|ngl=-1|"]
    # The next load of the same model and settings follows the clock from its first moment.
    bus.publish("instance.state", id="i1", old="healthy", new="starting")
    assert tracker.loading["i1"].key in tracker.past
    tracker.stop()


def test_a_serving_servers_log_lines_reach_no_listener_and_a_new_load_is_read_again() -> None:
    """A healthy llama-server writes several lines per request: with nothing loading, they are
    published to nobody (the tracker listens to lines only while a load is in progress)."""
    bus = EventBus()
    tracker = LoadTracker(bus, {"i1": _Instance(), "i2": _Instance()})
    tracker.start()
    listeners = lambda: bus._route("instance.log")[0]  # noqa: E731
    assert listeners() == ()
    bus.publish("instance.state", id="i1", old="stopped", new="starting")
    bus.publish("instance.state", id="i2", old="stopped", new="starting")
    assert len(listeners()) == 1
    bus.publish("instance.state", id="i1", old="starting", new="healthy")
    bus.publish("instance.log", id="i2", line=LOG[3])
    assert tracker.progress("i2") == {"stage": "starting server", "fraction": 0.95}  # still read
    bus.publish("instance.state", id="i2", old="starting", new="failed")
    assert listeners() == ()
    bus.publish("instance.state", id="i1", old="healthy", new="starting")
    bus.publish("instance.log", id="i1", line=LOG[0])
    assert tracker.loading["i1"].stage == "reading model"
    tracker.stop()
    assert listeners() == () and bus._route("instance.state")[0] == ()
