"""Every benchmark in one run: P1-P7 side by side (LlamaMan, a direct llama-server, llama.cpp's router
mode), a table on stdout, and the figures written into docs/PERFORMANCE.md between its bench markers.

Run: python bench/run_all.py [--quick] [--only P1,P5] [--json out.json] [--before before.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.client import raise_fd_limit
from bench.harness import (
    ROOT,
    auth_headers,
    direct_server,
    llamaman,
    machine,
    make_models,
    maybe_router_mode,
)
from bench.load import p5_thousand_streams, p6_idle
from bench.memory import p4_mixed_burst, p7_packing
from bench.report import render_markdown, render_table, write_doc
from bench.scenarios import Target, p1_latency, p2_streams, p3_cold_start, prepare_llamaman

ALL = ("P1", "P2", "P3", "P4", "P5", "P6", "P7")


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run(only: tuple[str, ...], quick: bool) -> dict[str, Any]:
    models = make_models(Path(tempfile.mkdtemp(prefix="bench-models-")))
    out: dict[str, Any] = {}
    scale = 0.25 if quick else 1.0

    if "P1" in only or "P3" in only:
        with (
            direct_server(models / "tiny-a.gguf") as direct,
            maybe_router_mode(models, 2) as router,
            llamaman(models) as lm,
        ):
            prepare_llamaman(lm, ctx=2048, parallel=1)
            # pid: P1 also times each relay against its own llama-server, found among its children.
            router_t = Target("router", router.url, {}, pid=router.popen.pid) if router is not None else None
            if "P1" in only:
                _log("P1: plain chat latency")
                targets = [
                    Target("direct", direct.url, {}),
                    *([router_t] if router_t is not None else []),
                    Target("llamaman", lm.url, auth_headers(), pid=lm.popen.pid),
                    Target("llamaman_main_port", lm.api, auth_headers()),
                ]
                out["P1"] = p1_latency(targets, n1=int(300 * scale), rounds16=int(30 * scale))
            if "P3" in only and router_t is not None:
                _log("P3: cold start")
                out["P3"] = p3_cold_start(lm, router_t, models / "tiny-a.gguf", repeats=3 if quick else 7)

    if "P2" in only:
        _log("P2: 32 concurrent streams")
        with (
            direct_server(models / "tiny-a.gguf", ctx=16384, parallel=32) as direct,
            maybe_router_mode(models, 2, ctx=16384, parallel=32) as router,
            llamaman(models) as lm,
        ):
            prepare_llamaman(lm, ctx=16384, parallel=32)
            targets = [
                Target("direct", direct.url, {}),
                *([Target("router", router.url, {})] if router is not None else []),
                Target("llamaman", lm.url, auth_headers(), pid=lm.popen.pid),
                Target("llamaman_ollama", lm.url, auth_headers(), dialect="ollama", pid=lm.popen.pid),
            ]
            out["P2"] = p2_streams(targets, rounds=2 if quick else 4)

    if "P4" in only:
        _log("P4: mixed burst on three copies of gemma-3-270m, room for one")
        out["P4"] = p4_mixed_burst(quick)

    if "P5" in only:
        _log("P5: 1,000 concurrent streams (fake upstream)")
        out["P5"] = p5_thousand_streams(models, repeat=1 if quick else 2)

    if "P6" in only:
        _log("P6: idle manager with UI")
        out["P6"] = p6_idle(models, seconds=10 if quick else 30)

    if "P7" in only:
        _log("P7: packing four gemma sizes under a memory limit")
        out["P7"] = p7_packing(quick)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join(ALL), help="comma-separated subset, e.g. P1,P5")
    ap.add_argument("--quick", action="store_true", help="fewer samples (a smoke run; not for the record)")
    ap.add_argument("--json", type=Path, help="also write the raw figures here")
    ap.add_argument("--before", type=Path, help="raw figures of an earlier run, shown beside these")
    ap.add_argument("--no-doc", action="store_true", help="do not touch docs/PERFORMANCE.md")
    args = ap.parse_args(argv)
    only = tuple(p.strip().upper() for p in args.only.split(",") if p.strip())
    raise_fd_limit()
    command = "python bench/run_all.py" + "".join(
        f" {a}" for a in (argv if argv is not None else sys.argv[1:])
    )
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    t0 = time.monotonic()
    results = run(only, args.quick)
    meta = {
        "machine": machine(),
        "command": command,
        "date": started,
        "seconds": round(time.monotonic() - t0),
    }
    before: dict[str, Any] | None = None
    if args.before is not None:
        with contextlib.suppress(OSError, ValueError):
            before = json.loads(args.before.read_text())["results"]
    print(render_table(results, before))
    print(f"machine: {meta['machine']}\ncommand: {meta['command']}\ndate: {meta['date']}")
    if args.json is not None:
        args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    if not args.no_doc and not args.quick:
        write_doc(ROOT / "docs" / "PERFORMANCE.md", render_markdown(results, before, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
