"""LlamaMan's own CPU time per request and per streamed token, against the fast fake llama-server.

CPU time of the LlamaMan process, not wall time, so the figures hold on a busy machine: the way to
compare two versions of the relay while others share the cores. ``--profile FILE`` runs LlamaMan
under cProfile and writes its stats there (read them with ``python -m pstats FILE``).

``--main-port`` sends the requests to LlamaMan's main port instead of its proxy port.

``--parallel N`` gives the instance N slots: LlamaMan sends it N + 1 requests at a time and queues
the rest, whatever ``-c`` asks. ``FAKE_TOKEN_DELAY`` (seconds) keeps a stream's
tokens that far apart at the fake server.

Run: python bench/cpu_cost.py [-n 2000] [--tokens 256] [-c 1] [--parallel 1] [--main-port]
                              [--profile out.prof] [--only plain openai_stream ollama_stream]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.client import Result, chat, expected, ollama_chat, session
from bench.fake_upstream import wrapper_script
from bench.harness import auth_headers, llamaman, make_models, put_preset


def _cpu(pid: int) -> float:
    c = psutil.Process(pid).cpu_times()
    return c.user + c.system


async def _measure(
    url: str, pid: int, n: int, tokens: int, concurrency: int, only: list[str] | None = None
) -> dict[str, Any]:
    headers = auth_headers()
    out: dict[str, Any] = {}
    async with session() as s:
        want = expected("tiny-a", tokens)
        cases: dict[str, Any] = {
            "plain": lambda: chat(s, url, "tiny-a", 8, headers=headers, check=expected("tiny-a", 8)),
            "openai_stream": lambda: chat(s, url, "tiny-a", tokens, stream=True, headers=headers, check=want),
            "ollama_stream": lambda: ollama_chat(s, url, "tiny-a", tokens, headers=headers, check=want),
        }
        for name, make in cases.items():
            if only and name not in only:
                continue
            count = n if name == "plain" else max(1, n // 10)
            for _ in range(20):
                await make()  # warm-up: connections, caches
            c0 = _cpu(pid)
            results: list[Result] = []
            for start in range(0, count, concurrency):
                results += await asyncio.gather(*(make() for _ in range(min(concurrency, count - start))))
            spent = _cpu(pid) - c0
            streamed = sum(r.tokens for r in results) if name != "plain" else 0
            out[name] = {
                "requests": count,
                "us_per_request": 1e6 * spent / count,
                **({"us_per_token": 1e6 * spent / streamed} if streamed else {}),
                "errors": [r.error for r in results if r.error][:3],
            }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=2000, help="plain requests (streams: a tenth of that)")
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("-c", "--concurrency", type=int, default=1)
    ap.add_argument("--parallel", type=int, default=1, help="the instance's slots (see above)")
    ap.add_argument("--profile", type=Path, help="run LlamaMan under cProfile, stats to this file")
    ap.add_argument(
        "--only", nargs="+", choices=("plain", "openai_stream", "ollama_stream"), help="these cases"
    )
    ap.add_argument("--main-port", action="store_true", help="through the main port, not the proxy port")
    args = ap.parse_args()
    models = make_models(Path(tempfile.mkdtemp(prefix="bench-models-")))
    fake = wrapper_script(Path(tempfile.mkdtemp(prefix="bench-fake-")))
    with llamaman(models, server_bin=str(fake), profile=args.profile) as lm:
        put_preset(lm, "tiny-a.gguf", ctx_size=2048 * args.parallel, parallel=args.parallel)
        url = lm.api if args.main_port else lm.url
        figures = asyncio.run(_measure(url, lm.popen.pid, args.n, args.tokens, args.concurrency, args.only))
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
