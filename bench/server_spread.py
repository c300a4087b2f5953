"""How far apart llama-servers of one build and one model come out in P1's rotation, with nothing in
front of any of them: the spread the goal row's comparison of two processes carries.

``--servers`` llama-servers (default 3), started one after another with P1's flags; the last
``--as-llamaman`` of them (default 1) as LlamaMan starts its instances (``-ngl 999 --alias tiny-a
--metrics``, a key in ``LLAMA_API_KEY``, the output to a log file). They get P1's plain chat at
concurrency 1 in P1's cyclic rotation, the first target rotating, each answer checked. For each:
its p50 and the p50 of its own ``timings`` (``prompt_ms`` + ``predicted_ms``), each less the first
server's. ``--server-args`` adds llama-server arguments to every server. ``--last-first`` starts and
lists the LlamaMan-style servers first instead, to tell a place in the start order and the rotation
from a process.

Run: python bench/server_spread.py [-n 400] [--servers 3] [--as-llamaman 1] [--last-first]
                                  [--server-args '--poll 0']
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import direct_server, machine, make_models, percentile
from bench.scenarios import Target, rotation_results, warm_up

KEY = "server-spread-key-0123456789abcdefghijklmnop"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=400, help="rounds")
    ap.add_argument("--servers", type=int, default=3)
    ap.add_argument(
        "--as-llamaman", type=int, default=1, help="how many of them start as LlamaMan starts one"
    )
    ap.add_argument(
        "--last-first", action="store_true", help="start and list the LlamaMan-style servers first"
    )
    ap.add_argument("--server-args", default="", help="llama-server arguments for every server ('--poll 0')")
    args = ap.parse_args()
    more = args.server_args.split()
    folder = Path(tempfile.mkdtemp(prefix="bench-spread-"))
    model = make_models(folder) / "tiny-a.gguf"
    styled = [False] * (args.servers - args.as_llamaman) + [True] * args.as_llamaman
    if args.last_first:
        styled.reverse()
    with contextlib.ExitStack() as stack:
        targets: list[Target] = []  # in the order they start, which is also the rotation's
        for i, as_llamaman in enumerate(styled, 1):
            if not as_llamaman:
                p = stack.enter_context(direct_server(model, *more))
                targets.append(Target(f"server {i}", p.url, {}))
                continue
            p = stack.enter_context(
                direct_server(
                    model, "-ngl", "999", "--alias", "tiny-a", "--metrics", *more,
                    env={"LLAMA_API_KEY": KEY}, log=folder / f"server-{i}.log",
                )
            )  # fmt: skip
            targets.append(
                Target(f"server {i}, as LlamaMan starts it", p.url, {"Authorization": f"Bearer {KEY}"})
            )
        asyncio.run(warm_up(targets))
        results = asyncio.run(rotation_results(targets, args.n))
    first = results[targets[0].name]
    base = percentile([r.ms for r in first], 0.5)
    base_own = percentile([r.server_ms for r in first if r.server_ms is not None], 0.5)
    print(machine())
    flags = f"-n {args.n} --servers {args.servers} --as-llamaman {args.as_llamaman}"
    if more:
        flags += f" --server-args '{args.server_args}'"
    print(f"command: python bench/server_spread.py {flags}" + (" --last-first" if args.last_first else ""))
    print(f"{'':44} {'p50 (ms)':>9} {'vs first':>9} {'own p50':>9} {'vs first':>9}")
    for t in targets:
        res = results[t.name]
        p50 = percentile([r.ms for r in res], 0.5)
        own = percentile([r.server_ms for r in res if r.server_ms is not None], 0.5)
        print(f"{t.name:44} {p50:9.2f} {p50 - base:9.2f} {own:9.2f} {own - base_own:9.2f}")


if __name__ == "__main__":
    main()
