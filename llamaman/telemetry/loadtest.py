"""Load test a model: N streamed chat completions at concurrency C, prompt of about P tokens, up to M
tokens each, through LlamaMan's proxy or straight to the instance's llama-server.

Measures time to first token (the first content delta), end-to-end latency, throughput and errors.
Used by ``llamaman bench`` and by ``POST /api/benchmarks``.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field

_FILLER = "the quick brown fox jumps over the lazy dog while five wizards box at night "


class BenchmarkParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)
    requests: int = Field(default=50, ge=1, le=100_000)
    concurrency: int = Field(default=4, ge=1, le=1024)
    prompt_tokens: int = Field(default=32, ge=1, le=1_000_000)
    max_tokens: int = Field(default=32, ge=1, le=1_000_000)
    target: Literal["proxy", "direct"] = "proxy"


@dataclass
class _One:
    ok: bool
    latency_s: float
    ttft_s: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None


@dataclass
class _Run:
    results: list[_One] = field(default_factory=list)


def percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return None
    s = sorted(values)
    pos = (len(s) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def _stats_ms(values_s: list[float]) -> dict[str, float | None]:
    ms = [v * 1000 for v in values_s]
    out = {f"p{q}": _r(percentile(ms, q)) for q in (50, 95, 99)}
    out["mean"] = _r(sum(ms) / len(ms)) if ms else None
    out["min"] = _r(min(ms)) if ms else None
    out["max"] = _r(max(ms)) if ms else None
    return out


def _r(v: float | None, nd: int = 2) -> float | None:
    return round(v, nd) if v is not None else None


def build_prompt(tokens: int, chars_per_token: float = 1.0) -> str:
    """Text of about ``tokens`` tokens at ``chars_per_token`` (the tiny test models: one letter each)."""
    n = max(1, round(tokens * chars_per_token))
    return (_FILLER * (n // len(_FILLER) + 1))[:n]


async def _calibrate(
    client: httpx.AsyncClient, base: str, params: BenchmarkParams, headers: dict[str, str]
) -> float:
    """Characters per token of the model's tokenizer, from one /tokenize call (4 when it cannot say)."""
    sample = build_prompt(512)
    body: dict[str, Any] = {"content": sample}
    if params.target == "proxy":
        body["model"] = params.model
    try:
        r = await client.post(f"{base}/tokenize", json=body, headers=headers, timeout=60)
        n = len(r.json().get("tokens") or []) if r.status_code == 200 else 0
    except (httpx.HTTPError, ValueError):
        n = 0
    return len(sample) / n if n else 4.0


def _chat_body(params: BenchmarkParams, prompt: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": params.max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
        # Every request should generate the full M tokens, however the model would like to stop.
        "ignore_eos": True,
        "temperature": 0,
    }
    if params.target == "proxy":
        body["model"] = params.model
    return body


async def _one(client: httpx.AsyncClient, url: str, body: dict[str, Any], headers: dict[str, str]) -> _One:
    t0 = time.perf_counter()
    ttft: float | None = None
    usage: dict[str, Any] = {}
    deltas = 0
    try:
        async with client.stream("POST", url, json=body, headers=headers) as r:
            if r.status_code >= 400:
                text = (await r.aread()).decode(errors="replace")[:300]
                return _One(False, time.perf_counter() - t0, error=f"HTTP {r.status_code}: {text}")
            async for line in r.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                try:
                    obj = json.loads(data)
                except json.JSONDecodeError:
                    continue
                if "error" in obj:
                    return _One(False, time.perf_counter() - t0, ttft, error=str(obj["error"])[:300])
                if isinstance(obj.get("usage"), dict):
                    usage = obj["usage"]
                for choice in obj.get("choices") or []:
                    delta = choice.get("delta") or {}
                    if delta.get("content") or delta.get("reasoning_content"):
                        deltas += 1
                        if ttft is None:
                            ttft = time.perf_counter() - t0
    except httpx.HTTPError as exc:
        return _One(False, time.perf_counter() - t0, ttft, error=f"{exc.__class__.__name__}: {exc}"[:300])
    latency = time.perf_counter() - t0
    if ttft is None:
        return _One(False, latency, error="the stream carried no content")
    return _One(
        True,
        latency,
        ttft,
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or deltas),
    )


async def run_benchmark(
    base_url: str,
    params: BenchmarkParams,
    *,
    api_key: str | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> dict[str, Any]:
    """Run the benchmark against ``base_url`` (a LlamaMan proxy, or a llama-server for "direct")."""
    base = base_url.rstrip("/")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(
        max_connections=params.concurrency + 2, max_keepalive_connections=params.concurrency + 2
    )
    async with httpx.AsyncClient(
        timeout=httpx.Timeout(600, connect=10), limits=limits, trust_env=False, transport=transport
    ) as client:
        cpt = await _calibrate(client, base, params, headers)
        body = _chat_body(params, build_prompt(params.prompt_tokens, cpt))
        url = f"{base}/v1/chat/completions"
        # A first request loads the model (when it is not loaded) and warms its caches; not counted.
        w0 = time.perf_counter()
        warm = await _one(client, url, {**body, "max_tokens": 1}, headers)
        warmup_s = time.perf_counter() - w0
        run = _Run()
        todo = iter(range(params.requests))

        async def worker() -> None:
            for _ in todo:
                run.results.append(await _one(client, url, body, headers))

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(min(params.concurrency, params.requests))))
        wall = time.perf_counter() - t0
    return summarize(params, run.results, wall, warmup_s, warm.error, cpt)


def summarize(
    params: BenchmarkParams,
    results: list[_One],
    wall_s: float,
    warmup_s: float = 0.0,
    warmup_error: str | None = None,
    chars_per_token: float | None = None,
) -> dict[str, Any]:
    ok = [r for r in results if r.ok]
    completion = sum(r.completion_tokens for r in ok)
    per_request = [r.completion_tokens / r.latency_s for r in ok if r.latency_s > 0]
    errors = [r.error for r in results if not r.ok and r.error]
    return {
        "requests": len(results),
        "completed": len(ok),
        "errors": len(results) - len(ok),
        "error_samples": list(dict.fromkeys(errors))[:5],
        "wall_s": _r(wall_s, 3),
        "requests_per_s": _r(len(ok) / wall_s if wall_s > 0 else None, 3),
        "ttft_ms": _stats_ms([r.ttft_s for r in ok if r.ttft_s is not None]),
        "latency_ms": _stats_ms([r.latency_s for r in ok]),
        "prompt_tokens_mean": _r(sum(r.prompt_tokens for r in ok) / len(ok)) if ok else None,
        "completion_tokens": completion,
        "tokens_per_s": _r(completion / wall_s if wall_s > 0 else None),
        "tokens_per_s_per_request": _r(sum(per_request) / len(per_request)) if per_request else None,
        "warmup_s": _r(warmup_s, 3),
        "warmup_error": warmup_error,
        "chars_per_token": _r(chars_per_token, 3),
    }


def format_table(params: BenchmarkParams, result: dict[str, Any], where: str) -> str:
    def cell(v: Any) -> str:
        return f"{v:>10.1f}" if isinstance(v, int | float) else f"{'-':>10}"

    lines = [
        f"llamaman bench: {params.model} via {where}: {params.requests} requests, concurrency "
        f"{params.concurrency}, prompt ~{params.prompt_tokens} tokens, max {params.max_tokens} tokens",
        "",
        f"{'':<14}{'p50':>10}{'p95':>10}{'p99':>10}{'mean':>10}",
    ]
    for label, key in (("TTFT (ms)", "ttft_ms"), ("latency (ms)", "latency_ms")):
        s = result[key]
        lines.append(f"{label:<14}{cell(s['p50'])}{cell(s['p95'])}{cell(s['p99'])}{cell(s['mean'])}")
    lines += [
        "",
        f"requests:   {result['completed']} ok, {result['errors']} errors in {result['wall_s']} s "
        f"({result['requests_per_s']} req/s)",
        f"tokens/s:   {result['tokens_per_s']} overall "
        f"({result['completion_tokens']} completion tokens / wall time), "
        f"{result['tokens_per_s_per_request']} mean per request",
        f"prompt:     {result['prompt_tokens_mean']} tokens on average; warm-up {result['warmup_s']} s",
    ]
    for e in result["error_samples"]:
        lines.append(f"error:      {e}")
    return "\n".join(lines)


class BenchError(Exception):
    pass
