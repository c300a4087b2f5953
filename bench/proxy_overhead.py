"""Latency LlamaMan's proxy adds over a direct llama-server, for plain and streamed chat.

Both targets serve the same tiny model; requests alternate between them so drift hits both alike.
Run: python bench/proxy_overhead.py [-n 300]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import auth_headers, direct_server, llamaman, machine, make_models, percentile

BODY = {"model": "tiny-a", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


def one(client: httpx.Client, url: str, stream: bool) -> float:
    t0 = time.perf_counter()
    if stream:
        with client.stream("POST", url, json={**BODY, "stream": True}) as r:
            for _ in r.iter_bytes():
                pass
            assert r.status_code == 200, r.status_code
    else:
        r = client.post(url, json=BODY)
        assert r.status_code == 200, r.text
    return (time.perf_counter() - t0) * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=300, help="requests per target and mode")
    args = ap.parse_args()
    models = make_models(Path(tempfile.mkdtemp(prefix="bench-models-")))
    with direct_server(models / "tiny-a.gguf") as direct, llamaman(models) as lm:
        c_direct = httpx.Client(base_url=direct.url, timeout=60)
        c_proxy = httpx.Client(base_url=lm.url, timeout=60, headers=auth_headers())
        # Warm-up: the first proxy request loads the model.
        for _ in range(20):
            one(c_direct, "/v1/chat/completions", False)
            one(c_proxy, "/v1/chat/completions", False)
        print(f"machine: {machine()}")
        print(f"command: python bench/proxy_overhead.py -n {args.n}")
        print(f"{'mode':<8} {'direct p50':>11} {'direct p99':>11} {'proxy p50':>10} {'proxy p99':>10} "
              f"{'added p50':>10} {'added p99':>10}  (ms)")  # fmt: skip
        for stream in (False, True):
            d: list[float] = []
            p: list[float] = []
            for _ in range(args.n):
                d.append(one(c_direct, "/v1/chat/completions", stream))
                p.append(one(c_proxy, "/v1/chat/completions", stream))
            dp50, dp99, pp50, pp99 = (percentile(d, 0.5), percentile(d, 0.99), percentile(p, 0.5),
                                      percentile(p, 0.99))  # fmt: skip
            mode = "stream" if stream else "plain"
            print(f"{mode:<8} {dp50:>11.2f} {dp99:>11.2f} {pp50:>10.2f} {pp99:>10.2f} "
                  f"{pp50 - dp50:>10.2f} {pp99 - dp99:>10.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
