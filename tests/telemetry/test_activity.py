"""The activity log: rows for real proxied requests, filters, CSV, retention, and the per-model summary
with energy charged from the stand-in NVML."""

from __future__ import annotations

import asyncio
import csv
import io
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from sqlmodel import select

from llamaman.app import LlamaMan
from llamaman.core.config import Settings
from llamaman.core.db import Database
from llamaman.core.events import EventBus
from llamaman.core.exchange import Exchange
from llamaman.core.runtime import RuntimeConfig
from llamaman.core.tables import RequestLog
from llamaman.core.tasks import wait_event
from llamaman.proxy.app import ProxyServer, create_proxy_app
from llamaman.telemetry.activity import ActivityLog
from llamaman.telemetry.energy import EnergyAttributor, Span
from tests.helpers import admin_headers

HI = [{"role": "user", "content": "hi"}]


async def chat(http: httpx.AsyncClient, model: str = "tiny-a", *, stream: bool = False, n: int = 6) -> Any:
    # Streams without stream_options: their token counts come from llama-server's timings.
    body = {"model": model, "messages": HI, "max_tokens": n, "stream": stream}
    if not stream:
        r = await http.post("/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
        return r.json()
    async with http.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        return [line async for line in r.aiter_lines()]


@pytest.mark.llama
async def test_rows_filters_and_csv(
    services: LlamaMan, http: httpx.AsyncClient, api: httpx.AsyncClient
) -> None:
    t0 = time.time()
    await chat(http, n=5)
    await chat(http, stream=True, n=7)
    await chat(http, "tiny-b", n=3)
    bad = await http.post("/v1/chat/completions", json={"model": "tiny-b", "messages": "nope"})
    assert bad.status_code >= 400

    body = (await api.get("/api/activity")).json()
    assert body["total"] == 4
    rows = body["items"]
    assert [r["model"] for r in rows] == ["tiny-b", "tiny-b", "tiny-a", "tiny-a"]  # newest first
    streamed, plain = rows[2], rows[3]
    assert plain["completion_tokens"] == 5 and plain["prompt_tokens"] > 0 and plain["status"] == 200
    # The same prompt again: llama-server reuses it from its cache and still counts all of it.
    assert streamed["completion_tokens"] == 7 and streamed["prompt_tokens"] == plain["prompt_tokens"]
    for r in (plain, streamed):
        assert r["endpoint"] == "/v1/chat/completions" and r["key_name"] == "tests"
        assert 0 < r["ttft_ms"] <= r["duration_ms"] and r["tokens_per_s"] > 0
        assert t0 - 1 <= r["ts"] <= time.time() and r["energy_j"] is None  # no GPU here

    async def ids(**params: Any) -> list[int]:
        r = await api.get("/api/activity", params=params)
        assert r.status_code == 200, r.text
        return [row["id"] for row in r.json()["items"]]

    all_ids = [r["id"] for r in rows]
    assert await ids(model="tiny-a") == all_ids[2:]
    assert await ids(status="error") == all_ids[:1] == await ids(status="4xx")
    assert await ids(status="ok") == all_ids[1:] == await ids(status="200")
    assert await ids(endpoint="/v1/chat/completions", model="tiny-b", status="ok") == all_ids[1:2]
    assert await ids(endpoint="/api/chat") == []
    assert await ids(limit=2, offset=1) == all_ids[1:3]
    assert await ids(since=rows[1]["ts"]) == all_ids[:2]
    assert await ids(until=rows[1]["ts"]) == all_ids[2:]
    iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t0 + 3600))
    assert await ids(since=iso) == []
    assert (await api.get("/api/activity", params={"since": "yesterday"})).status_code == 400
    assert (await api.get("/api/activity", params={"status": "bad"})).status_code == 400

    r = await api.get("/api/activity.csv", params={"model": "tiny-a"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert "attachment" in r.headers["content-disposition"]
    table = list(csv.DictReader(io.StringIO(r.text)))
    assert [int(t["id"]) for t in table] == all_ids[2:]
    assert table[1]["completion_tokens"] == "5" and table[1]["energy_j"] == ""

    summary = {m["model"]: m for m in (await api.get("/api/activity/summary")).json()["models"]}
    a = summary["tiny-a"]
    assert (a["requests"], a["errors"], a["completion_tokens"]) == (2, 0, 12)
    assert a["total_tokens"] == a["prompt_tokens"] + 12 and a["mean_ttft_ms"] > 0 and a["tokens_per_s"] > 0
    assert a["energy_j"] is None and a["j_per_1k_tokens"] is None
    assert summary["tiny-b"]["requests"] == 2 and summary["tiny-b"]["errors"] == 1


def _settings_db(make_settings: Callable[..., Settings]) -> tuple[Database, RuntimeConfig]:
    settings = make_settings()
    settings.ensure_dirs()
    db = Database(settings.effective_database_url)
    db.migrate()
    return db, RuntimeConfig(settings, db, EventBus())


def _exchange(i: int) -> Exchange:
    ex = Exchange(f"m{i % 3}", "/v1/chat/completions", status=200, prompt_tokens=10, completion_tokens=i)
    ex.first_byte = ex.started + 0.01
    ex.finished = ex.started + 0.02
    return ex


async def test_observe_only_queues_and_retention_prunes(make_settings: Callable[..., Settings]) -> None:
    db, runtime = _settings_db(make_settings)
    await runtime.update({"activity_retention": 100})
    log = ActivityLog(db, runtime)
    for i in range(150):
        log.observe(_exchange(i))
    with db.session() as s:
        assert s.exec(select(RequestLog)).all() == []  # nothing written on the request path
    assert await log.flush() == 150
    assert await log.prune() == 50
    with db.session() as s:
        kept = s.exec(select(RequestLog).order_by(RequestLog.id)).all()  # type: ignore[arg-type]
    assert len(kept) == 100 and [r.completion_tokens for r in kept] == list(range(50, 150))
    assert await log.prune() == 0
    db.dispose()


async def test_background_writer_batches_and_prunes(make_settings: Callable[..., Settings]) -> None:
    db, runtime = _settings_db(make_settings)
    await runtime.update({"activity_retention": 100})
    log = ActivityLog(db, runtime, batch_delay=0.05, prune_every_s=0.1)
    await log.start()
    try:
        for i in range(130):
            log.observe(_exchange(i))
        # The writer works on its own schedule (in a thread, on a loaded machine): wait for what it
        # must reach, with a bound far above its 0.05 s batch and 0.1 s prune rounds.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            with db.session() as s:
                if len(s.exec(select(RequestLog.id)).all()) == 100 and log.written == 130:
                    break
        else:
            pytest.fail("the writer did not write and prune")
    finally:
        await log.stop()
    db.dispose()


def test_energy_is_split_among_concurrent_requests() -> None:
    # 100 W throughout; A runs 0-10 s, B 5-15 s: each pays for half of the 5 s they share.
    energy = EnergyAttributor(lambda a, b: 100 * (b - a), lambda: 20.0, settle_s=60)
    energy.add(Span(1, 0, 10))
    energy.add(Span(2, 5, 15))
    assert energy.settle(now=16, idle=False) == {}  # the other request might still be running
    charged = energy.settle(now=16, idle=True)
    assert charged == {1: pytest.approx(750), 2: pytest.approx(750)}
    assert sum(charged.values()) == pytest.approx(1500)  # all the energy of 0-15 s, none twice
    energy.add(Span(3, 16, 18))
    assert energy.settle(now=80, idle=False) == {3: pytest.approx(200)}  # settled by age
    energy.add(Span(4, 19, 25))
    assert energy.settle(now=100, idle=True) == {}  # not sampled that far yet
    assert [s.key for s in energy.pending] == [4]


@pytest.mark.llama
async def test_energy_per_request_and_per_1k_tokens(
    gpu_services: LlamaMan, gpu_api: httpx.AsyncClient
) -> None:
    server = ProxyServer(create_proxy_app(gpu_services), "127.0.0.1", 0)
    await server.start()
    try:
        headers = await admin_headers(gpu_services)
        async with httpx.AsyncClient(base_url=server.url, timeout=60, headers=headers) as http:
            for n in (8, 16, 24):
                await chat(http, n=n)
    finally:
        await server.stop()
    telemetry = gpu_services.telemetry
    ends = time.monotonic()
    while (telemetry.gpu.latest_time() or 0) <= ends:  # the sampler (every 50 ms) passes the last end
        await asyncio.sleep(0.02)
    await telemetry.activity.flush()

    rows = (await gpu_api.get("/api/activity")).json()["items"]
    assert len(rows) == 3
    for r in rows:
        # Alone on two GPUs drawing 100 W + 200 W: 0.3 J per millisecond of the request.
        assert r["energy_j"] == pytest.approx(0.3 * r["duration_ms"], rel=0.02)
    body = (await gpu_api.get("/api/activity/summary")).json()
    assert body["gpu_energy"] is True
    (a,) = body["models"]
    joules = sum(r["energy_j"] for r in rows)
    tokens = sum(r["prompt_tokens"] + r["completion_tokens"] for r in rows)
    assert a["energy_j"] == pytest.approx(joules, abs=0.01) and a["requests_with_energy"] == 3
    assert a["j_per_1k_tokens"] == pytest.approx(joules / tokens * 1000, rel=1e-3)

    r = await gpu_api.get("/api/activity/summary.csv")
    (line,) = list(csv.DictReader(io.StringIO(r.text)))
    assert line["model"] == "tiny-a" and float(line["j_per_1k_tokens"]) == pytest.approx(a["j_per_1k_tokens"])


async def test_the_writer_counts_a_request_at_once_and_writes_its_row_once_nothing_is_in_flight(
    make_settings: Callable[..., Settings],
) -> None:
    db, runtime = _settings_db(make_settings)
    idle = asyncio.Event()  # requests in flight until it is set
    recorded: list[Any] = []

    async def wait_idle(at_most: float) -> None:
        await wait_event(idle, at_most)

    log = ActivityLog(
        db, runtime, batch_delay=0.01, max_defer=60.0, wait_idle=wait_idle, on_record=recorded.append
    )
    await log.start()
    try:
        log.observe(_exchange(7))
        # The metrics count it after the batch delay, while other answers are still being given...
        async with asyncio.timeout(30):
            while not recorded:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)  # ...and for as long as they are, the write waits.
        assert log.written == 0
        idle.set()
        async with asyncio.timeout(30):
            while log.written == 0:
                await asyncio.sleep(0.01)
        with db.session() as s:
            assert [r.completion_tokens for r in s.exec(select(RequestLog)).all()] == [7]
    finally:
        await log.stop()
        db.dispose()


async def test_an_idle_writer_sleeps_until_a_request_ends(make_settings: Callable[..., Settings]) -> None:
    db, runtime = _settings_db(make_settings)
    energy = EnergyAttributor(lambda a, b: None, lambda: None)
    log = ActivityLog(db, runtime, energy=energy, energy_enabled=lambda: True, prune_every_s=30.0)
    assert log.seconds_to_next_round() == 0.0  # the table was never pruned: once, at the first round
    await log.prune()
    assert log.seconds_to_next_round() is None  # nothing new and nothing to charge: no timer at all
    log.observe(_exchange(1))
    await log.flush()
    # New rows are pruned once the interval is up; the energy of a request waits for samples.
    assert energy.pending and log.seconds_to_next_round() == 2.0
    energy.discard_pending()
    due = log.seconds_to_next_round()
    assert due is not None and 29.0 < due <= 30.0
    await log.prune()
    assert log.seconds_to_next_round() is None
    db.dispose()
