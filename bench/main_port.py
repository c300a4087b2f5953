"""What requests to LlamaMan's main (UI) port cost the proxy port's, in one process.

P1's rotation (a plain chat, max_tokens 8, to a direct llama-server, router mode and LlamaMan's proxy
port, one each in turn, the first target rotating) is run in pairs of blocks: one with LlamaMan's
main port as a fourth target, one without it, their order swapped from pair to pair. Each block
prints each target's added p50 (its p50 less the direct server's, in ms); the end, the proxy port's
mean over the blocks of each kind.

Run: python bench/main_port.py [-n 200] [--pairs 4]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import auth_headers, direct_server, llamaman, make_models, maybe_router_mode, percentile
from bench.scenarios import Target, prepare_llamaman, rotation, warm_up


def added_p50(targets: list[Target], n: int) -> dict[str, float]:
    """Each target's added p50 (ms) over ``n`` rounds of the rotation."""
    asyncio.run(warm_up(targets))
    ms = asyncio.run(rotation(targets, n))
    direct = percentile(ms["direct"], 0.5)
    return {name: percentile(v, 0.5) - direct for name, v in ms.items() if name != "direct"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=200, help="rounds of the rotation per block")
    ap.add_argument("--pairs", type=int, default=4, help="pairs of blocks, with and without the main port")
    args = ap.parse_args()
    models = make_models(Path(tempfile.mkdtemp(prefix="bench-models-")))
    with (
        direct_server(models / "tiny-a.gguf") as d,
        maybe_router_mode(models, 2) as r,
        llamaman(models) as lm,
    ):
        prepare_llamaman(lm, ctx=2048, parallel=1)
        base = [Target("direct", d.url, {}), *([Target("router", r.url, {})] if r is not None else [])]
        proxy = Target("proxy port", lm.url, auth_headers())
        main_port = Target("main port", lm.api, auth_headers())
        kinds = {"with the main port": [*base, proxy, main_port], "without it": [*base, proxy]}
        added: dict[str, list[float]] = {kind: [] for kind in kinds}
        for pair in range(args.pairs):
            for kind in list(kinds) if pair % 2 == 0 else list(kinds)[::-1]:
                figures = added_p50(kinds[kind], args.n)
                print(f"{kind}: " + ", ".join(f"{k} {v:.3f}" for k, v in figures.items()), flush=True)
                added[kind].append(figures["proxy port"])
    for kind, values in added.items():
        print(f"proxy port, mean added p50 {kind}: {statistics.mean(values):.3f} ms")


if __name__ == "__main__":
    main()
