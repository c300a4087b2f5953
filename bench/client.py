"""The benchmarks' load generator: chat requests over aiohttp (cheaper per request than httpx, so the
client steals less of the 2 cores from the servers it measures), each answer checked.

Run as a module it is the P5 client process: ``python -m bench.client --url URL -n 500 ...`` opens
that many concurrent streams at a given start time and prints one JSON line of results.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TEXTS = {"tiny-a": "abcdefghijklmnopqrstuvwxyz", "tiny-b": "zyxwvutsrqponmlkjihgfedcba"}


def expected(model: str, n: int) -> str:
    cycle = TEXTS[model]
    return (cycle * (n // len(cycle) + 1))[:n]


@dataclass
class Result:
    ms: float = 0.0
    ttft_ms: float | None = None
    tokens: int = 0
    error: str | None = None
    # llama-server's own time for a whole answer (its ``timings``: prompt_ms + predicted_ms)
    server_ms: float | None = None


@dataclass
class Stats:
    results: list[Result] = field(default_factory=list)

    @property
    def errors(self) -> list[str]:
        return [r.error for r in self.results if r.error]


def session(limit: int = 0, keep_alive: bool = True) -> aiohttp.ClientSession:
    """``keep_alive=False`` for concurrent bursts: llama-server serves each kept-alive connection on
    one of its few HTTP threads (n_parallel + 2) until 5 s of idleness, so a client holding more idle
    connections than that stalls its own later requests against a direct or router-mode server."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit, force_close=not keep_alive),
        timeout=aiohttp.ClientTimeout(total=600),
    )


def body(model: str, max_tokens: int, stream: bool) -> bytes:
    messages = [{"role": "user", "content": "hi"}]
    return json.dumps(
        {"model": model, "messages": messages, "max_tokens": max_tokens, "stream": stream}
    ).encode()


async def chat(
    s: aiohttp.ClientSession,
    url: str,
    model: str,
    max_tokens: int,
    *,
    stream: bool = False,
    headers: dict[str, str] | None = None,
    check: str | None = None,
) -> Result:
    """One chat completion; ``check`` is the text the answer must be (a stream must also end in [DONE])."""
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    t0 = time.perf_counter()
    res = Result()
    try:
        async with s.post(
            f"{url}/v1/chat/completions", data=body(model, max_tokens, stream), headers=hdrs
        ) as r:
            if r.status != 200:
                res.error = f"HTTP {r.status}: {(await r.text())[:200]}"
                return res
            if not stream:
                obj = await r.json(content_type=None)
                text = obj["choices"][0]["message"]["content"]
                res.tokens = int(obj.get("usage", {}).get("completion_tokens") or len(text))
                timings = obj.get("timings")
                if isinstance(timings, dict):
                    res.server_ms = float(timings.get("prompt_ms", 0)) + float(timings.get("predicted_ms", 0))
            else:
                text, done = await _read_sse(r, res, t0)
                if not done:
                    res.error = "stream ended without [DONE]"
            if check is not None and text != check and res.error is None:
                res.error = f"wrong content: {text[:40]!r} (expected {check[:40]!r})"
    except (aiohttp.ClientError, TimeoutError, KeyError, ValueError) as exc:
        res.error = f"{type(exc).__name__}: {exc}"
    finally:
        res.ms = (time.perf_counter() - t0) * 1000
    return res


def ollama_body(model: str, max_tokens: int) -> bytes:
    messages = [{"role": "user", "content": "hi"}]
    return json.dumps(
        {"model": model, "messages": messages, "stream": True, "options": {"num_predict": max_tokens}}
    ).encode()


async def ollama_chat(
    s: aiohttp.ClientSession,
    url: str,
    model: str,
    max_tokens: int,
    *,
    headers: dict[str, str] | None = None,
    check: str | None = None,
) -> Result:
    """One streamed Ollama ``/api/chat``; ``check`` as in ``chat`` (the stream must end in done: true)."""
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    t0 = time.perf_counter()
    res = Result()
    try:
        async with s.post(f"{url}/api/chat", data=ollama_body(model, max_tokens), headers=hdrs) as r:
            if r.status != 200:
                res.error = f"HTTP {r.status}: {(await r.text())[:200]}"
                return res
            text, done = await _read_ndjson(r, res, t0)
            if not done:
                res.error = "stream ended without done: true"
            if check is not None and text != check and res.error is None:
                res.error = f"wrong content: {text[:40]!r} (expected {check[:40]!r})"
    except (aiohttp.ClientError, TimeoutError, KeyError, ValueError) as exc:
        res.error = f"{type(exc).__name__}: {exc}"
    finally:
        res.ms = (time.perf_counter() - t0) * 1000
    return res


async def _read_ndjson(r: aiohttp.ClientResponse, res: Result, t0: float) -> tuple[str, bool]:
    parts: list[str] = []
    done = False
    buf = b""
    async for chunk in r.content.iter_any():
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for line in lines:
            if not line.strip():
                continue
            obj = json.loads(line)
            if "error" in obj:
                raise ValueError(f"error line: {obj['error']}")
            piece = (obj.get("message") or {}).get("content")
            if piece:
                if res.ttft_ms is None:
                    res.ttft_ms = (time.perf_counter() - t0) * 1000
                parts.append(piece)
                res.tokens += 1
            done = done or obj.get("done") is True
    return "".join(parts), done


async def _read_sse(r: aiohttp.ClientResponse, res: Result, t0: float) -> tuple[str, bool]:
    parts: list[str] = []
    done = False
    buf = b""
    async for chunk in r.content.iter_any():
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for line in lines:
            if not line.startswith(b"data: "):
                continue
            payload = line[6:].strip()
            if payload == b"[DONE]":
                done = True
                continue
            obj = json.loads(payload)
            if "error" in obj:
                raise ValueError(f"error event: {obj['error']}")
            for choice in obj.get("choices") or ():
                piece = (choice.get("delta") or {}).get("content")
                if piece:
                    if res.ttft_ms is None:
                        res.ttft_ms = (time.perf_counter() - t0) * 1000
                    parts.append(piece)
                    res.tokens += 1
    return "".join(parts), done


def raise_fd_limit(want: int = 65536) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


# ---- P5 client process -------------------------------------------------------------------------
async def _swarm(args: argparse.Namespace) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {args.key}"} if args.key else {}
    check = expected("tiny-a", args.tokens)
    async with session(limit=0) as s:
        delay = args.start_at - time.time()
        if delay > 0:
            await asyncio.sleep(delay)

        async def client() -> list[Result]:
            return [
                await chat(s, args.url, "tiny-a", args.tokens, stream=True, headers=headers, check=check)
                for _ in range(args.repeat)
            ]

        t0 = time.perf_counter()
        done = await asyncio.gather(*(client() for _ in range(args.n)))
        wall = time.perf_counter() - t0
    results = [r for rs in done for r in rs]
    return {
        "wall_s": wall,
        "ms": [r.ms for r in results],
        "ttft_ms": [r.ttft_ms for r in results if r.ttft_ms is not None],
        "tokens": sum(r.tokens for r in results),
        "errors": [r.error for r in results if r.error][:20],
        "n_errors": sum(1 for r in results if r.error),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("-n", type=int, default=500, help="concurrent clients in this process")
    ap.add_argument("--repeat", type=int, default=1, help="streams per client, one after the other")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--key", default="")
    ap.add_argument("--start-at", type=float, default=0.0, help="wall-clock time to start (all processes)")
    args = ap.parse_args()
    raise_fd_limit()
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:
        factory = asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        out = runner.run(_swarm(args))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
