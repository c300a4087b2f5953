"""P1's plain chat at concurrency 1, seen from the kernel's scheduler: how long LlamaMan holds a
request on its way in and on its way out, measured without any code in LlamaMan's process.

P1's rotation (a direct llama-server, router mode and LlamaMan, one request each in turn) runs
while ``perf sched record`` traces every wake-up on the machine for a few seconds. Each hop of a
request shows as one process waking another:

- **way in**: the client wakes LlamaMan (the request's bytes) until LlamaMan wakes a thread of its
  llama-server (the request written to it);
- **way out**: llama-server wakes LlamaMan (the answer) until LlamaMan wakes the client;
- **round trip**, for each target: the client wakes the target's process until the target wakes the
  client; LlamaMan's less the direct server's is what it adds, as the kernel saw it.

Needs ``perf`` (linux-perf) and the right to trace the whole machine (root, or
``kernel.perf_event_paranoid`` at -1). Tracing slows every process a little; compare figures
within one run.

Run: python bench/hops.py [-n 200] [--seconds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import (
    auth_headers,
    direct_server,
    llamaman,
    machine,
    make_models,
    maybe_router_mode,
    percentile,
)
from bench.scenarios import Target, prepare_llamaman, rotation, warm_up

_WAKE = re.compile(r"^\s*([\d.]+)\s+\[\d+\]\s+(.+?)\s+awakened: (.+?)\s*$")
_TASK = re.compile(r"\[(\d+)(?:/(\d+))?\]$")


def _ids(task: str) -> tuple[int, int]:
    """(thread, process) of a task as ``perf sched timehist`` names it: ``comm[tid/pid]`` or ``comm[pid]``."""
    m = _TASK.search(task)
    if m is None:
        return -1, -1
    tid = int(m.group(1))
    return tid, int(m.group(2) or tid)


@dataclass
class Hops:
    way_in: list[float] = field(default_factory=list)
    way_out: list[float] = field(default_factory=list)
    round_trip: dict[str, list[float]] = field(default_factory=dict)


def wake_ups(timehist: str) -> Iterable[tuple[float, tuple[int, int], tuple[int, int]]]:
    """(time in s, waker's (thread, process), woken's (thread, process)) for every wake-up in the
    output of ``perf sched timehist -w``."""
    for line in timehist.splitlines():
        m = _WAKE.match(line)
        if m is not None:
            yield float(m.group(1)), _ids(m.group(2)), _ids(m.group(3))


def hops(
    events: Iterable[tuple[float, tuple[int, int], tuple[int, int]]],
    client: int,
    llamaman: int,
    its_server: set[int],
    targets: dict[str, set[int]],
) -> Hops:
    """The hops of every request in ``events`` (``wake_ups``). ``client``: the process asking;
    ``llamaman``: its process (the event loop's thread has its id); ``its_server``: the processes of
    its llama-server; ``targets``: the processes each target answers from (its round trip's other end)."""
    h = Hops(round_trip={name: [] for name in targets})
    came_in = answered = None
    asked: dict[str, float] = {}
    for t, (waker_tid, waker), (woken_tid, woken) in events:
        if waker == client and woken_tid == llamaman:
            came_in = t
        elif waker_tid == llamaman and woken in its_server and came_in is not None:
            h.way_in.append(t - came_in)
            came_in = None
        elif waker in its_server and woken_tid == llamaman:
            answered = t
        elif waker_tid == llamaman and woken == client and answered is not None:
            h.way_out.append(t - answered)
            answered = None
        for name, procs in targets.items():
            if waker == client and woken in procs:
                asked[name] = t
            elif waker in procs and woken == client and name in asked:
                h.round_trip[name].append(t - asked.pop(name))
    return h


def _traced_rotation(targets: list[Target], n: int, trace: Path, seconds: float) -> None:
    """P1's rotation, with ``perf sched record`` tracing the whole machine from a quarter of the way."""
    asyncio.run(warm_up(targets))
    perf: list[subprocess.Popen[bytes]] = []

    def start_trace(i: int) -> None:
        if i == n // 4:
            argv = ["perf", "sched", "record", "-a", "-o", str(trace), "--", "sleep", str(seconds)]
            perf.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    asyncio.run(rotation(targets, n, start_trace))
    if perf and perf[0].wait() != 0:
        raise RuntimeError("perf sched record failed: is it allowed to trace the whole machine?")


def _family(pid: int) -> set[int]:
    p = psutil.Process(pid)
    return {pid, *(c.pid for c in p.children(recursive=True))}


def run(n: int, seconds: float) -> Hops:
    models = make_models(Path(tempfile.mkdtemp(prefix="bench-models-")))
    trace = Path(tempfile.mkdtemp(prefix="bench-hops-")) / "sched.data"
    with (
        direct_server(models / "tiny-a.gguf") as direct,
        maybe_router_mode(models, 2) as router,
        llamaman(models) as lm,
    ):
        prepare_llamaman(lm, ctx=2048, parallel=1)
        targets = [
            Target("direct", direct.url, {}),
            *([Target("router", router.url, {})] if router is not None else []),
            Target("llamaman", lm.url, auth_headers()),
        ]
        _traced_rotation(targets, n, trace, seconds)
        its_server = _family(lm.popen.pid) - {lm.popen.pid}
        ends = {"direct": {direct.popen.pid}, "llamaman": {lm.popen.pid}}
        if router is not None:
            ends["router"] = {router.popen.pid}
        timehist = subprocess.run(
            ["perf", "sched", "timehist", "-i", str(trace), "-w"], capture_output=True, text=True, check=True
        ).stdout
        found = hops(wake_ups(timehist), os.getpid(), lm.popen.pid, its_server, ends)
    shutil.rmtree(trace.parent, ignore_errors=True)
    return found


def _row(name: str, values: list[float], scale: float = 1e6) -> str:
    if not values:
        return f"{name:58s} {'-':>8s}"
    v = [x * scale for x in values]
    return f"{name:58s} {percentile(v, 0.5):8.0f} {percentile(v, 0.9):8.0f} {len(v):6d}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=200, help="rounds of the rotation (the trace covers some)")
    ap.add_argument("--seconds", type=float, default=2.0, help="how long to trace")
    args = ap.parse_args()
    if shutil.which("perf") is None:
        sys.exit("perf is not installed (Debian: linux-perf)")
    h = run(args.n, args.seconds)
    print(f"{'hop (µs, as the scheduler saw it)':58s} {'p50':>8s} {'p90':>8s} {'n':>6s}")
    print(_row("way in: request's bytes -> written to llama-server", h.way_in))
    print(_row("way out: llama-server's answer -> written to the client", h.way_out))
    direct = h.round_trip.get("direct", [])
    for name, values in h.round_trip.items():
        print(_row(f"round trip through {name}", values))
        if name != "direct" and values and direct:
            added = statistics.median(values) - statistics.median(direct)
            print(f"{'  ... added p50 (its p50 less the direct one)':58s} {added * 1e6:8.0f}")
    print(f"machine: {machine()}")
    print(f"command: python bench/hops.py -n {args.n} --seconds {args.seconds:g}")


if __name__ == "__main__":
    main()
