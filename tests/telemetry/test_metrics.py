"""/metrics after real chats through a listening proxy, parsed the way Prometheus parses it."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from llamaman.app import LlamaMan

pytestmark = pytest.mark.llama

HI = [{"role": "user", "content": "hello there"}]


def families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(fams: dict[str, Any], family: str, sample: str, **labels: str) -> float:
    found = [
        s.value
        for s in fams[family].samples
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert len(found) == 1, (family, sample, labels, fams[family].samples)
    return found[0]


async def test_request_and_token_counters_match_llama_server_usage(
    services: LlamaMan, http: httpx.AsyncClient, api: httpx.AsyncClient
) -> None:
    prompt = completion = 0
    for n in range(5):
        r = await http.post(
            "/v1/chat/completions", json={"model": "tiny-a", "messages": HI, "max_tokens": 4 + n}
        )
        assert r.status_code == 200, r.text
        usage = r.json()["usage"]
        prompt += usage["prompt_tokens"]
        completion += usage["completion_tokens"]
    assert completion == sum(4 + n for n in range(5))

    fams = families((await api.get("/metrics")).text)
    chat = {"model": "tiny-a", "endpoint": "/v1/chat/completions"}
    assert value(fams, "llamaman_requests", "llamaman_requests_total", **chat, status="200") == 5
    assert value(fams, "llamaman_prompt_tokens", "llamaman_prompt_tokens_total", model="tiny-a") == prompt
    assert (
        value(fams, "llamaman_completion_tokens", "llamaman_completion_tokens_total", model="tiny-a")
        == completion
    )
    assert value(fams, "llamaman_ttft_seconds", "llamaman_ttft_seconds_count", model="tiny-a") == 5
    duration = "llamaman_request_duration_seconds"
    assert value(fams, duration, f"{duration}_count", **chat) == 5
    assert value(fams, duration, f"{duration}_sum", **chat) > 0
    assert (
        value(fams, "llamaman_model_load_seconds", "llamaman_model_load_seconds_count", model="tiny-a") == 1
    )

    (m,) = services.supervisor.list()
    inst = {"instance": m.id, "model": "tiny-a"}
    assert value(fams, "llamaman_instance_state", "llamaman_instance_state", **inst, state="healthy") == 1
    assert value(fams, "llamaman_instance_state", "llamaman_instance_state", **inst, state="stopped") == 0
    assert value(fams, "llamaman_instance_inflight", "llamaman_instance_inflight", **inst) == 0
    assert value(fams, "llamaman_instance_queue_depth", "llamaman_instance_queue_depth", **inst) == 0
    assert value(fams, "llamaman_evictions", "llamaman_evictions_total") == 0
    assert value(fams, "llamaman_model_loads", "llamaman_model_loads_total") == 1
    # No GPU here: the GPU families are present but empty.
    if not services.telemetry.gpu.readings:
        assert fams["llamaman_gpu_power_watts"].samples == []

    # The proxy port serves the same registry.
    proxied = families((await http.get("/metrics")).text)
    assert value(proxied, "llamaman_requests", "llamaman_requests_total", **chat, status="200") == 5


async def test_failed_requests_are_counted_by_status(
    services: LlamaMan, http: httpx.AsyncClient, api: httpx.AsyncClient
) -> None:
    # llama-server refuses a malformed body; the refusal passes through the proxy and is counted.
    r = await http.post("/v1/chat/completions", json={"model": "tiny-a", "messages": "not a list"})
    assert r.status_code >= 400
    fams = families((await api.get("/metrics")).text)
    samples = [
        s for s in fams["llamaman_requests"].samples if s.name == "llamaman_requests_total" and s.value
    ]
    assert [(s.labels["model"], s.labels["status"]) for s in samples] == [("tiny-a", str(r.status_code))]
    assert fams["llamaman_ttft_seconds"].samples == []  # a refusal has no first token


async def test_metrics_registries_are_per_services(services: LlamaMan, make_settings: Any) -> None:
    other = LlamaMan(make_settings(LLAMA_SERVER_BIN="unused"))
    assert other.telemetry.metrics.registry is not services.telemetry.metrics.registry
    other.telemetry.metrics.requests.labels("x", "/v1/chat/completions", "200").inc()
    assert b'model="x"' not in services.telemetry.metrics.render()
    await other.http.aclose()
    other.db.dispose()
