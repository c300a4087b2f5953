"""``llamaman bench`` against a real llama-server, and benchmarks over REST."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import select

from llamaman.app import LlamaMan
from llamaman.core.tables import ApiKey, Benchmark
from llamaman.telemetry.loadtest import BenchmarkParams, build_prompt, percentile, summarize
from tests.conftest import port_block

ROOT = Path(__file__).resolve().parents[2]


def test_percentiles_interpolate_between_ranks() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 95) == pytest.approx(95.05)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile([7.0], 99) == 7.0 and percentile([], 50) is None


def test_prompt_length_follows_the_tokenizer() -> None:
    assert len(build_prompt(32)) == 32  # tiny models: a token per character
    assert len(build_prompt(100, chars_per_token=4.2)) == 420


def test_summary_of_a_run_with_failures() -> None:
    from llamaman.telemetry.loadtest import _One

    results = [_One(True, 1.0, 0.1, 10, 20), _One(True, 2.0, 0.3, 10, 20), _One(False, 0.5, error="HTTP 503")]
    out = summarize(BenchmarkParams(model="m", requests=3), results, wall_s=2.0)
    assert (out["requests"], out["completed"], out["errors"]) == (3, 2, 1)
    assert out["error_samples"] == ["HTTP 503"]
    assert out["ttft_ms"]["p50"] == pytest.approx(200) and out["latency_ms"]["mean"] == pytest.approx(1500)
    assert out["tokens_per_s"] == 20 and out["tokens_per_s_per_request"] == 15
    assert out["requests_per_s"] == 1


@pytest.mark.llama
def test_cli_bench_starts_everything_runs_and_prints_percentiles(
    models_dir: Path, tmp_path: Path, llama_server_bin: str
) -> None:
    pub, internal = port_block(8), port_block(8)
    env = {
        **os.environ,
        "MODELS_DIR": str(models_dir),
        "DATA_DIR": str(tmp_path / "data"),
        "LLAMA_SERVER_BIN": llama_server_bin,
        "LLAMAMAN_HOST": "127.0.0.1",
        "LLAMAMAN_PROXY_PORT": "0",
        "PORT_RANGE_START": str(pub),
        "PORT_RANGE_END": str(pub + 7),
        "INTERNAL_PORT_RANGE_START": str(internal),
        "INTERNAL_PORT_RANGE_END": str(internal + 7),
    }
    done = subprocess.run(
        [sys.executable, "main.py", "bench", "--model", "tiny-a", "-n", "50", "-c", "4"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "tiny-a via proxy http://127.0.0.1:" in out and "50 requests, concurrency 4" in out
    header = next(line for line in out.splitlines() if "p50" in line)
    assert header.split() == ["p50", "p95", "p99", "mean"]
    for label in ("TTFT (ms)", "latency (ms)"):
        row = next(line for line in out.splitlines() if line.startswith(label))
        p50, p95, p99, _ = (float(v) for v in row[len(label) :].split())
        assert 0 < p50 <= p95 <= p99
    assert "50 ok, 0 errors" in out and "req/s" in out and "tokens/s" in out
    # The run used a throwaway data folder, not DATA_DIR: a LlamaMan there would keep its instances.
    assert not (tmp_path / "data" / "llamaman.db").exists()


@pytest.mark.llama
@pytest.mark.auth  # require-auth on: a proxy run brings its own key
async def test_rest_benchmark_runs_in_the_background_and_is_stored(
    services: LlamaMan, api: httpx.AsyncClient
) -> None:
    params = {"model": "tiny-a", "requests": 12, "concurrency": 3, "prompt_tokens": 40, "max_tokens": 8}
    results: dict[str, Any] = {}
    for target in ("proxy", "direct"):
        r = await api.post("/api/benchmarks", json={**params, "target": target})
        assert r.status_code == 202, r.text
        started = r.json()
        assert started["status"] == "running" and started["params"]["target"] == target
        deadline = time.monotonic() + 120  # a bound, not a window: the loop ends when the run does
        while time.monotonic() < deadline:
            got = (await api.get(f"/api/benchmarks/{started['id']}")).json()
            if got["status"] != "running":
                break
            await asyncio.sleep(0.1)
        assert got["status"] == "done", got
        results[target] = got

    for target, got in results.items():
        res = got["results"]
        assert (res["requests"], res["completed"], res["errors"]) == (12, 12, 0), res
        assert 0 < res["ttft_ms"]["p50"] <= res["ttft_ms"]["p95"] <= res["ttft_ms"]["p99"]
        assert res["ttft_ms"]["p50"] <= res["latency_ms"]["p50"]
        assert res["completion_tokens"] == 12 * 8 and res["tokens_per_s"] > 0
        assert res["requests_per_s"] > 0 and res["tokens_per_s_per_request"] > 0
        assert res["prompt_tokens_mean"] >= 40  # the content plus the chat template's tokens
        assert res["target_url"].startswith("proxy" if target == "proxy" else "instance")

    listed = (await api.get("/api/benchmarks")).json()
    assert [b["id"] for b in listed] == [results["direct"]["id"], results["proxy"]["id"]]
    with services.db.session() as s:
        stored = s.get(Benchmark, results["proxy"]["id"])
        assert stored is not None and stored.status == "done" and stored.results["completed"] == 12
        # The proxy run's own key is gone with the run; its rows in the activity log carry its name.
        key = s.exec(select(ApiKey).where(ApiKey.name == f"benchmark {stored.id}")).one()
        assert key.revoked
    rows = (await api.get("/api/activity", params={"key_name": f"benchmark {stored.id}"})).json()
    assert rows["total"] >= 13  # the warm-up and the runs (and the tokenizer probe)


async def test_rest_benchmark_refusals(api: httpx.AsyncClient) -> None:
    r = await api.post("/api/benchmarks", json={"model": "no-such-model"})
    assert r.status_code == 404
    r = await api.post("/api/benchmarks", json={"model": "tiny-a", "concurrency": 0})
    assert r.status_code == 422
    r = await api.post("/api/benchmarks", json={"model": "tiny-a", "target": "elsewhere"})
    assert r.status_code == 422
    assert (await api.get("/api/benchmarks/nope")).status_code == 404
