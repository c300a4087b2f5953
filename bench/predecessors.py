"""How much P1's figures depend on which target went just before: P1's plain chat at concurrency 1
(max_tokens 8, tiny model) to a direct llama-server, router mode, ``socat`` and the least HTTP relay
in Python (each in front of a llama-server of its own, as in ``bench/relay_floor.py``), and
LlamaMan's proxy and main ports, in a fresh random order each round (seeded, so a run can be
repeated), one request each.

Each target's latency is then split by the target whose request went just before it, and printed as
added p50 (ms): the target's p50 after that one, less the direct server's p50 over the whole run. A
process that has just run finds its code and data still in the caches; one that follows another
finds them evicted, and pays for it on every step. The diagonal (a target after itself) is the
warm case; the rest of each row, the cold ones. P1's own rotation keeps the targets in one cyclic
order, so each of them follows mostly the same other one.

Run: python bench/predecessors.py [-n 500] [--seed 1]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import TypeVar

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
from bench.relay_floor import python_relay, socat_target
from bench.scenarios import Target, in_rounds, prepare_llamaman, warm_up

T = TypeVar("T")


def orders(targets: list[T], rounds: int, seed: int) -> list[list[T]]:
    """The order of each round: every target once, shuffled afresh each round (seeded)."""
    rng = random.Random(seed)
    return [rng.sample(targets, len(targets)) for _ in range(rounds)]


def by_before(sent: list[tuple[str, float]]) -> dict[tuple[str, str], list[float]]:
    """Each target's latencies (ms), keyed (target, the target sent just before it), from the
    requests in the order sent; ("all", target) holds them whatever went before."""
    out: dict[tuple[str, str], list[float]] = defaultdict(list)
    before = ""
    for name, ms in sent:
        if before:
            out[(name, before)].append(ms)
        out[("all", name)].append(ms)
        before = name
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=500, help="rounds: one request to each target per round")
    ap.add_argument("--seed", type=int, default=1, help="seed of the order of each round")
    args = ap.parse_args()
    models = make_models(Path(tempfile.mkdtemp(prefix="bench-models-")))
    with contextlib.ExitStack() as stack:
        direct = stack.enter_context(direct_server(models / "tiny-a.gguf"))
        targets = [Target("direct", direct.url, {})]
        router = stack.enter_context(maybe_router_mode(models, 2))
        if router is not None:
            targets.append(Target("router mode", router.url, {}))
        socat = socat_target(stack, models, "socat")
        if socat is not None:
            targets.append(socat)
        targets.append(python_relay(stack, models, "http", "least relay"))
        lm = stack.enter_context(llamaman(models))
        prepare_llamaman(lm, ctx=2048, parallel=1)
        targets.append(Target("LlamaMan", lm.url, auth_headers()))
        targets.append(Target("LlamaMan main", lm.api, auth_headers()))
        asyncio.run(warm_up(targets))
        sent = asyncio.run(in_rounds(orders(targets, args.n, args.seed)))
        ms = by_before([(t.name, r.ms) for t, r in sent])
    base = percentile(ms[("all", "direct")], 0.5)
    names = [t.name for t in targets]
    width = max(len(n) for n in names) + 2
    print(f"{machine()}")
    print(f"command: python bench/predecessors.py -n {args.n} --seed {args.seed}")
    print("added p50 (ms) of each row's target, by the target just before it (n per cell in brackets)")
    print(f"{'':{width}}{'overall':>14}" + "".join(f"{'after ' + n:>20}" for n in names))
    for name in names:
        cells = [f"{percentile(ms[('all', name)], 0.5) - base:14.2f}"]
        for before in names:
            got = ms.get((name, before), [])
            cell = f"{percentile(got, 0.5) - base:14.2f} ({len(got):3d})" if len(got) >= 10 else f"{'-':>20}"
            cells.append(cell)
        print(f"{name:{width}}" + "".join(cells))


if __name__ == "__main__":
    main()
