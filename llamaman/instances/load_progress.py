"""How far a loading llama-server has got: a stage read from its log, and a fraction that also
leans on how long the same model took to load last time.

The log alone moves in jumps (a big model spends most of its load in one stage), so when a past
load time of the same model and settings is known the fraction follows the clock between the
stage floors, never past 95 % before the server answers. Published as ``instance.progress``
events when the stage changes; readers that want the clock's share too ask ``progress()``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from llamaman.core.events import Event, EventBus

# (pattern in a log line, stage name, the fraction the stage starts at), in load order; llama-server
# builds differ in what they print, so each stage has a few spellings.
STAGES: tuple[tuple[re.Pattern[str], str, float], ...] = (
    (re.compile(r"loading model|llama_model_loader|load_model:"), "reading model", 0.05),
    (re.compile(r"load_tensors|threadpool init|loading tensors"), "loading tensors", 0.2),
    (re.compile(r"llama_context|llama_kv_cache|initializing, n_slots|n_ctx_slot"), "creating context", 0.8),
    (re.compile(r"warming up|warmup"), "warming up", 0.9),
    (re.compile(r"model loaded|listening on|server is listening"), "starting server", 0.95),
)
STARTING = ("starting process", 0.0)
CAP = 0.95


def stage_of(line: str) -> tuple[str, float] | None:
    """The load stage a log line announces, if any (the furthest one when it names several)."""
    for pattern, name, floor in reversed(STAGES):
        if pattern.search(line):
            return name, floor
    return None


def fraction(floor: float, elapsed: float, expected: float | None) -> float:
    """The share done: the stage's floor, or the clock's estimate when a past load time is known."""
    if expected is None or expected <= 0:
        return floor
    return round(max(floor, min(CAP, elapsed / expected)), 3)


@dataclass
class Loading:
    key: str
    started: float
    stage: str = STARTING[0]
    floor: float = STARTING[1]


class LoadTracker:
    """The loads in progress, and the last load time of each model and settings."""

    def __init__(self, events: EventBus, instances: Mapping[str, Any]) -> None:
        self.events = events
        self.instances = instances
        self.loading: dict[str, Loading] = {}
        self.past: dict[str, float] = {}
        self._unlisten: Callable[[], None] | None = None
        self._unlisten_lines: Callable[[], None] | None = None

    def start(self) -> None:
        self._unlisten = self.events.listen(self._on_event, "instance.state")

    def stop(self) -> None:
        for off in (self._unlisten, self._unlisten_lines):
            if off is not None:
                off()
        self._unlisten = self._unlisten_lines = None

    def _read_lines_while_loading(self) -> None:
        # Log lines tell a load's stage; a serving server writes several per request, which are
        # then published to nobody (unless a browser watches the log).
        if self.loading and self._unlisten_lines is None and self._unlisten is not None:
            self._unlisten_lines = self.events.listen(self._on_event, "instance.log")
        elif not self.loading and self._unlisten_lines is not None:
            self._unlisten_lines()
            self._unlisten_lines = None

    def _on_event(self, ev: Event) -> None:
        iid = ev.data.get("id", "")
        if ev.topic == "instance.state":
            self._on_state(iid, ev.data.get("new"))
        elif ev.topic == "instance.log" and iid in self.loading:
            found = stage_of(ev.data.get("line", ""))
            load = self.loading[iid]
            if found is not None and found[1] > load.floor:
                load.stage, load.floor = found
                self._publish(iid)

    def _on_state(self, iid: str, new: str | None) -> None:
        m = self.instances.get(iid)
        if new == "starting" and m is not None:
            self.loading[iid] = Loading(load_key(m), time.monotonic())
            self._publish(iid)
        elif new == "healthy" and iid in self.loading:
            load = self.loading.pop(iid)
            self.past[load.key] = time.monotonic() - load.started
            self.events.publish("instance.progress", id=iid, stage="loaded", fraction=1.0)
        else:
            self.loading.pop(iid, None)
        self._read_lines_while_loading()

    def _publish(self, iid: str) -> None:
        now = self.progress(iid)
        if now is not None:
            self.events.publish("instance.progress", id=iid, **now)

    def progress(self, iid: str) -> dict[str, Any] | None:
        """``{"stage", "fraction"}`` of a loading instance (None when it is not loading)."""
        load = self.loading.get(iid)
        if load is None:
            return None
        done = fraction(load.floor, time.monotonic() - load.started, self.past.get(load.key))
        return {"stage": load.stage, "fraction": done}


def load_key(m: Any) -> str:
    return key_of(m.record.model_path, m.settings)


def key_of(model_path: str, s: Any) -> str:
    """What makes two loads alike: the model file and the settings that change a load's length."""
    return f"{model_path}|ctx={s.ctx_size}|ngl={s.n_gpu_layers}|{s.extra_args or ''}"
