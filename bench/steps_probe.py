"""Runs ``main.py`` with the proxy's fast lane timed step by step (``bench/lane_steps.py`` reads it).

Run as ``python bench/steps_probe.py main.py [args]``. Before ``main.py`` starts, the lane's steps
are wrapped with a clock: for each request, when each step ended, counted from the moment its bytes
reached the proxy (``data_received``), and for the answer, from the moment llama-server's answer
reached the proxy until it was written to the client. Nothing in LlamaMan changes but the wrappers.

With ``LLAMAMAN_FLOOR_PORT`` set, the least relay (``bench/least_relay.py``) runs beside the lane
on that port, taking a lease per request, with the same two spans timed (rows ``L1`` and ``L2``).

SIGUSR1 writes the samples so far to ``LLAMAMAN_STEPS_OUT`` (JSON: step -> microseconds, one per
request) and starts a new set: the caller marks its phases that way.
"""

from __future__ import annotations

import functools
import json
import os
import runpy
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

_clock = time.perf_counter_ns
_samples: dict[str, list[float]] = {}
_t0 = 0  # the current request's bytes arrived
_t_answer = 0  # llama-server's answer arrived


def _mark(step: str, since: int) -> None:
    if since:
        _samples.setdefault(step, []).append((_clock() - since) / 1000)


def _after(cls: type, name: str, step: str) -> None:
    """Mark ``step`` when ``cls.name`` returns (counted from the request's arrival)."""
    inner: Callable[..., Any] = getattr(cls, name)

    @functools.wraps(inner)
    def timed(*args: Any, **kwargs: Any) -> Any:
        result = inner(*args, **kwargs)
        _mark(step, _t0)
        return result

    setattr(cls, name, timed)


def _before(cls: type, name: str, step: str, *, answer: bool = False) -> None:
    """Mark ``step`` when ``cls.name`` is called; ``answer``: counted from the answer's arrival."""
    inner: Callable[..., Any] = getattr(cls, name)

    @functools.wraps(inner)
    def timed(*args: Any, **kwargs: Any) -> Any:
        _mark(step, _t_answer if answer else _t0)
        return inner(*args, **kwargs)

    setattr(cls, name, timed)


def _install() -> None:
    from llamaman.gateway.http_protocol import CoalescingTransport
    from llamaman.proxy.fast_lane import FastLane
    from llamaman.proxy.fast_protocol import FastLaneProtocol
    from llamaman.upstream.client import UpstreamClient
    from llamaman.upstream.relay import Relay
    from llamaman.upstream.wire import Connection

    arrived = FastLaneProtocol.data_received

    def data_received(self: FastLaneProtocol, data: bytes) -> None:
        global _t0
        if self._admitted is None and self._exchange is None:
            _t0 = _clock()
        arrived(self, data)

    FastLaneProtocol.data_received = data_received  # type: ignore[method-assign]
    _before(FastLaneProtocol, "start_request", "1 headers parsed")
    _after(FastLane, "admit", "2 headers admitted (key checked)")
    _before(FastLaneProtocol, "on_message_complete", "3 body read")
    _after(FastLane, "ready", "4 body parsed and checked")
    _after(FastLane, "lease", "5 place taken")
    # The request is written before its exchange is made: what comes after overlaps llama-server.
    _after(FastLane, "send_now", "6 written to llama-server")
    _after(FastLane, "exchange", "7 request recorded in flight")
    # Step 6 in parts: the body for llama-server made, then the request's bytes and a kept
    # connection (the write itself, and the answer's state set up after it, are the rest of 6).
    _before(Relay, "send_now", "5a body encoded")
    _before(UpstreamClient, "_start", "5b request encoded, connection taken")

    upstream = Connection.data_received

    def answer_received(self: Connection, data: bytes) -> None:
        global _t_answer
        _t_answer = _clock()
        upstream(self, data)

    Connection.data_received = answer_received  # type: ignore[method-assign]

    # Step 8 in parts, counted from the answer's arrival like it.
    _before(FastLaneProtocol, "_answer_whole", "8a answer parsed", answer=True)
    _before(FastLaneProtocol, "_write", "8b client's answer made", answer=True)

    # The answer's bytes reach the socket in one of these: the transport holds a response's head
    # until the end of the event loop's turn unless its body follows at once.
    def on_socket(name: str) -> None:
        inner = getattr(CoalescingTransport, name)

        @functools.wraps(inner)
        def sent(self: CoalescingTransport, *args: Any) -> Any:
            global _t_answer
            result = inner(self, *args)
            if _t_answer and self._held is None:
                _mark("8 answer sent (from its arrival)", _t_answer)
                _t_answer = 0
            return result

        setattr(CoalescingTransport, name, sent)

    for name in ("write", "flush", *(["write_whole"] if hasattr(CoalescingTransport, "write_whole") else [])):
        on_socket(name)


# The least relay's moments, where it runs beside the lane (``LLAMAMAN_FLOOR_PORT`` set, see
# ``bench/least_relay.py``): the same two spans as the lane's, for the relay that does the least.
_least = {"in": 0, "back": 0}


def _least_mark(moment: str) -> None:
    now = _clock()
    if moment in _least:
        _least[moment] = now
    elif moment == "written" and _least["in"]:
        label = "L1 least relay: written"
        _samples.setdefault(label, []).append((now - _least["in"]) / 1000)
    elif moment == "out" and _least["back"]:
        label = "L2 least relay: answer sent"
        _samples.setdefault(label, []).append((now - _least["back"]) / 1000)


def _install_least_relay() -> None:
    import bench.least_relay as least

    least.MARK = _least_mark
    least._install()


def _dump(*_: Any) -> None:
    out = os.environ.get("LLAMAMAN_STEPS_OUT")
    if out:
        Path(out + ".tmp").write_text(json.dumps(_samples))
        os.replace(out + ".tmp", out)
    _samples.clear()


if __name__ == "__main__":
    _install()
    if os.environ.get("LLAMAMAN_FLOOR_PORT"):
        _install_least_relay()
    signal.signal(signal.SIGUSR1, _dump)
    script = sys.argv[1]
    sys.argv = sys.argv[1:]
    runpy.run_path(script, run_name="__main__")
