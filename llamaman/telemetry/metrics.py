"""Prometheus metrics, one registry per ``Services`` (so two LlamaMans in one process, as in tests,
never share counters).

Request metrics are fed by the activity log's background task; live values (queues, instance
states, GPUs) are read by a collector when Prometheus scrapes, so they cost nothing in between.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from llamaman.core.state import InstanceState
from llamaman.instances.supervisor import ManagedInstance, Supervisor
from llamaman.scheduling.router import Router
from llamaman.telemetry.gpu import GpuSampler

if TYPE_CHECKING:
    from llamaman.telemetry.activity import Finished

CONTENT_TYPE = CONTENT_TYPE_LATEST
_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
_LOAD_BUCKETS = (0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)


class LiveSources(Protocol):
    """Where live values are read at scrape time (telemetry is one)."""

    supervisor: Supervisor
    router: Router
    gpu: GpuSampler

    def instance_extra(self, m: ManagedInstance) -> dict[str, Any]: ...


class Metrics:
    def __init__(self, telemetry: LiveSources) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "llamaman_requests", "Proxied requests", ["model", "endpoint", "status"], registry=r
        )
        self.ttft = Histogram(
            "llamaman_ttft_seconds",
            "Time to first token (first byte of the answer)",
            ["model"],
            buckets=_TTFT_BUCKETS,
            registry=r,
        )
        self.duration = Histogram(
            "llamaman_request_duration_seconds",
            "End-to-end request latency",
            ["model", "endpoint"],
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter(
            "llamaman_prompt_tokens", "Prompt tokens processed", ["model"], registry=r
        )
        self.completion_tokens = Counter(
            "llamaman_completion_tokens", "Completion tokens generated", ["model"], registry=r
        )
        self.load_seconds = Histogram(
            "llamaman_model_load_seconds",
            "Time from launch to healthy",
            ["model"],
            buckets=_LOAD_BUCKETS,
            registry=r,
        )
        r.register(LiveCollector(telemetry))
        self._requests: dict[tuple[str, ...], Any] = {}
        self._durations: dict[tuple[str, ...], Any] = {}
        self._ttfts: dict[tuple[str, ...], Any] = {}
        self._prompts: dict[tuple[str, ...], Any] = {}
        self._completions: dict[tuple[str, ...], Any] = {}

    def record(self, f: Finished) -> None:
        # Labelled series are looked up in plain dicts: ``labels()`` builds and checks the label
        # tuple under a lock on every call, most of what recording cost. They are made on first
        # use only, so /metrics shows no empty series (no TTFT for a model only ever refused).
        _child(self._requests, self.requests, f.model, f.endpoint, str(f.status)).inc()
        _child(self._durations, self.duration, f.model, f.endpoint).observe(f.duration_ms / 1000)
        if f.ttft_ms is not None and f.status < 400:
            _child(self._ttfts, self.ttft, f.model).observe(f.ttft_ms / 1000)
        if f.prompt_tokens:
            _child(self._prompts, self.prompt_tokens, f.model).inc(f.prompt_tokens)
        if f.completion_tokens:
            _child(self._completions, self.completion_tokens, f.model).inc(f.completion_tokens)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _child(cache: dict[tuple[str, ...], Any], metric: Counter | Histogram, *labels: str) -> Any:
    child = cache.get(labels)
    if child is None:
        child = cache[labels] = metric.labels(*labels)
    return child


class LiveCollector(Collector):
    """Values read at scrape time from the router, the supervisor and the GPU sampler."""

    def __init__(self, telemetry: LiveSources) -> None:
        self.t = telemetry

    def collect(self) -> Iterator[Metric]:
        yield from self._instances()
        yield from self._router()
        yield from self._gpus()

    def _instances(self) -> Iterator[Metric]:
        services = self.t
        labels = ["instance", "model"]
        inflight = GaugeMetricFamily("llamaman_instance_inflight", "Requests being served", labels=labels)
        queued = GaugeMetricFamily(
            "llamaman_instance_queue_depth", "Requests waiting for a slot of the instance", labels=labels
        )
        state = GaugeMetricFamily(
            "llamaman_instance_state", "1 for the state the instance is in", labels=[*labels, "state"]
        )
        cpu = GaugeMetricFamily("llamaman_instance_cpu_percent", "CPU use of the instance", labels=labels)
        rss = GaugeMetricFamily(
            "llamaman_instance_rss_bytes", "Resident memory of the instance", labels=labels
        )
        vram = GaugeMetricFamily(
            "llamaman_instance_gpu_memory_bytes", "GPU memory held by the instance", labels=labels
        )
        for m in services.supervisor.list():
            lv = [m.id, m.record.model_name]
            counters: dict[str, Any] = services.router.counters(m)
            inflight.add_metric(lv, counters.get("active_requests", 0))
            queued.add_metric(lv, counters.get("queued_requests", 0))
            for s in InstanceState:
                state.add_metric([*lv, s.value], 1.0 if m.state == s else 0.0)
            usage = self.t.instance_extra(m)
            if usage.get("cpu_percent") is not None:
                cpu.add_metric(lv, usage["cpu_percent"])
            if usage.get("rss_bytes") is not None:
                rss.add_metric(lv, usage["rss_bytes"])
            if usage.get("gpu_memory_bytes") is not None:
                vram.add_metric(lv, usage["gpu_memory_bytes"])
        yield from (inflight, queued, state, cpu, rss, vram)

    def _router(self) -> Iterator[Metric]:
        router = self.t.router
        yield CounterMetricFamily(
            "llamaman_evictions", "Models unloaded to make room or on request", value=router.evictions
        )
        yield CounterMetricFamily(
            "llamaman_model_loads", "Models started or woken by the proxy", value=router.swaps
        )
        yield GaugeMetricFamily(
            "llamaman_router_waiting", "Requests waiting for a model to load", value=len(router.waiting)
        )

    def _gpus(self) -> Iterator[Metric]:
        gpu = self.t.gpu
        labels = ["gpu", "name", "uuid"]
        fams: dict[str, GaugeMetricFamily | CounterMetricFamily] = {
            "used": GaugeMetricFamily("llamaman_gpu_memory_used_bytes", "GPU memory in use", labels=labels),
            "total": GaugeMetricFamily("llamaman_gpu_memory_total_bytes", "GPU memory", labels=labels),
            "util": GaugeMetricFamily("llamaman_gpu_utilization_percent", "GPU busy percent", labels=labels),
            "power": GaugeMetricFamily("llamaman_gpu_power_watts", "GPU power draw", labels=labels),
            "limit": GaugeMetricFamily("llamaman_gpu_power_limit_watts", "GPU power limit", labels=labels),
            "temp": GaugeMetricFamily("llamaman_gpu_temperature_celsius", "GPU temperature", labels=labels),
            "energy": CounterMetricFamily(
                "llamaman_gpu_energy_joules", "GPU energy integrated from power samples", labels=labels
            ),
        }
        for i, r in enumerate(gpu.readings):
            lv = [str(i), r.name, r.uuid or r.key]
            for key, value in (
                ("used", r.memory_used),
                ("total", r.memory_total),
                ("util", r.utilization),
                ("power", r.power_w),
                ("limit", r.power_limit_w),
                ("temp", r.temperature_c),
            ):
                if value is not None:
                    fams[key].add_metric(lv, value)
            if r.power_w is not None:
                fams["energy"].add_metric(lv, gpu.energy_j.get(r.key, 0.0))
        yield from fams.values()
