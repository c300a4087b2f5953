"""Where the proxy's time goes on P1's plain chat at concurrency 1: the fast lane's steps, timed
inside LlamaMan (``bench/steps_probe.py``), in two settings.

- **P1's rotation**: requests go to a direct llama-server, router mode and LlamaMan one each in
  turn, as P1 sends them, so llama-server processes run between any two of LlamaMan's requests.
- **Back to back**: requests go to LlamaMan alone, each as soon as the last is answered.

For each step, the p50 of when it ended, counted from the moment the request's bytes reached the
proxy; the answer's steps are counted from the moment llama-server's answer reached it. Rows 5a-5b
and 8a-8b split steps 6 and 8 (the rest of 6 is the write and what is set up after it). P1's added
latency (LlamaMan's p50 less the direct server's, in the rotation) is printed beside them.

With ``--least``, the least relay (``bench/least_relay.py``) runs inside the same LlamaMan process
and joins the rotation, taking a lease per request; its way in (to llama-server's socket) and its
way out are timed the same way (rows L1 and L2), the floor for the lane's steps 6 and 8.

Run: python bench/lane_steps.py [-n 300] [--least]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import (
    auth_headers,
    direct_server,
    free_port,
    llamaman,
    machine,
    make_models,
    maybe_router_mode,
    percentile,
)
from bench.scenarios import Target, prepare_llamaman, rotation, warm_up

PROBE = Path(__file__).resolve().parent / "steps_probe.py"


def _collect(pid: int, out: Path) -> dict[str, list[float]]:
    """The probe's samples since the last call (it writes them on SIGUSR1)."""
    out.unlink(missing_ok=True)
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + 30
    while not out.exists():
        if time.monotonic() > deadline:
            raise TimeoutError("the probe wrote no samples")
        time.sleep(0.05)
    samples: dict[str, list[float]] = json.loads(out.read_text())
    return samples


def run(n: int, least: bool = False) -> dict[str, Any]:
    models = make_models(Path(tempfile.mkdtemp(prefix="bench-models-")))
    out = Path(tempfile.mkdtemp(prefix="bench-steps-")) / "steps.json"
    env = {"LLAMAMAN_STEPS_OUT": str(out)}
    floor = free_port() if least else 0
    if least:
        env |= {"LLAMAMAN_FLOOR_PORT": str(floor), "LLAMAMAN_FLOOR_MODES": "lease"}
    with contextlib.ExitStack() as stack:
        direct = stack.enter_context(direct_server(models / "tiny-a.gguf"))
        router = stack.enter_context(maybe_router_mode(models, 2))
        lm = stack.enter_context(llamaman(models, launcher=PROBE, extra_env=env))
        prepare_llamaman(lm, ctx=2048, parallel=1)
        mine = Target("llamaman", lm.url, auth_headers())
        targets = [
            Target("direct", direct.url, {}),
            *([Target("router", router.url, {})] if router is not None else []),
            mine,
            *([Target("least relay in LlamaMan", f"http://127.0.0.1:{floor}", {})] if least else []),
        ]
        asyncio.run(warm_up(targets))
        _collect(lm.popen.pid, out)
        ms = asyncio.run(rotation(targets, n))
        in_rotation = _collect(lm.popen.pid, out)
        alone = asyncio.run(rotation([mine], n))["llamaman"]
        back_to_back = _collect(lm.popen.pid, out)
    direct_p50 = percentile(ms["direct"], 0.5)
    return {
        "added_p50_ms": {k: percentile(v, 0.5) - direct_p50 for k, v in ms.items() if k != "direct"},
        "llamaman_p50_ms": {
            "rotation": percentile(ms["llamaman"], 0.5),
            "back_to_back": percentile(alone, 0.5),
        },
        "steps_us": {
            step: {
                "rotation": percentile(in_rotation[step], 0.5) if step in in_rotation else None,
                "back_to_back": percentile(back_to_back[step], 0.5) if step in back_to_back else None,
                "n": len(in_rotation.get(step, [])),
            }
            for step in sorted(set(in_rotation) | set(back_to_back))
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=300, help="requests to each target in each setting")
    ap.add_argument("--json", type=Path)
    ap.add_argument(
        "--least", action="store_true",
        help="the least relay (bench/least_relay.py) inside LlamaMan too, with a lease per request, "
        "in the rotation: its two spans beside the lane's (rows L1, L2)",
    )  # fmt: skip
    args = ap.parse_args()
    figures = run(args.n, args.least)
    print(f"{'step (p50, µs since the request arrived)':48s} {'P1 rotation':>12s} {'back to back':>13s}")
    for step, row in figures["steps_us"].items():
        cells = [f"{v:.0f}" if v is not None else "-" for v in (row["rotation"], row["back_to_back"])]
        print(f"{step:48s} {cells[0]:>12s} {cells[1]:>13s}")
    added = ", ".join(f"{k} {v:.2f} ms" for k, v in figures["added_p50_ms"].items())
    p50 = figures["llamaman_p50_ms"]
    print(f"added p50 in the rotation: {added}")
    print(f"LlamaMan p50: {p50['rotation']:.2f} ms in the rotation, {p50['back_to_back']:.2f} ms alone")
    print(f"machine: {machine()}")
    print(f"command: python bench/lane_steps.py -n {args.n}{' --least' if args.least else ''}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
