"""GPU telemetry against the stand-in NVML (two GPUs), fake sysfs and a fake nvidia-smi, plus the
no-GPU answer of this machine."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from llamaman.app import LlamaMan
from llamaman.core.state import InstanceState
from llamaman.telemetry.gpu import GpuSampler
from llamaman.telemetry.gpu_sources import DrmSource, NvidiaSmiSource, SourceUnavailable
from llamaman.testing import fake_nvml
from llamaman.testing.fake_nvml import GIB, FakeNvml
from tests.telemetry.conftest import fake_sampler


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_both_gpus_are_listed_with_every_field(fake_nvml: FakeNvml, tmp_path: Path) -> None:
    sampler = fake_sampler(fake_nvml, tmp_path)
    sampler.sample()
    info = sampler.info()
    assert info["reason"] is None and info["sources"] == ["nvml"]
    a, b = info["gpus"]
    assert (a["index"], a["name"], a["vendor"]) == (0, "NVIDIA Fake A100", "nvidia")
    assert a["uuid"] == "GPU-00000000-fake-0000-0000-000000000000"
    assert a["memory_used_bytes"] == 2 * GIB and a["memory_total_bytes"] == 80 * GIB
    assert a["memory_percent"] == 2.5
    assert (a["utilization_percent"], a["temperature_c"]) == (35, 45)
    assert (a["power_w"], a["power_limit_w"]) == (100, 400)
    assert b["name"] == "NVIDIA Fake RTX 4090" and b["memory_total_bytes"] == 24 * GIB
    assert (b["power_w"], b["power_limit_w"], b["utilization_percent"]) == (200, 450, 70)
    sampler.close()
    assert fake_nvml.shutdown_calls == 1


def test_the_module_itself_stands_in_for_pynvml(tmp_path: Path) -> None:
    fake_nvml.reset()
    sampler = GpuSampler(nvml=fake_nvml, drm_root=tmp_path, cli=False)
    assert len(sampler.sample()) == 2
    sampler.close()


def test_energy_integral_grows_with_power_times_time(fake_nvml: FakeNvml, tmp_path: Path) -> None:
    clock = Clock()
    sampler = GpuSampler(nvml=fake_nvml, drm_root=tmp_path, cli=False, clock=clock)
    sampler.sample()  # 100 W and 200 W
    assert sampler.info()["total_energy_j"] == 0
    clock.t += 10
    sampler.sample()
    a, b = sampler.info()["gpus"]
    assert a["energy_j"] == pytest.approx(1000) and b["energy_j"] == pytest.approx(2000)
    fake_nvml.set_power(0, 300)  # trapezoid: the 10 s from 100 W to 300 W average 200 W
    clock.t += 10
    sampler.sample()
    assert sampler.info()["gpus"][0]["energy_j"] == pytest.approx(3000)
    assert sampler.info()["total_energy_j"] == pytest.approx(3000 + 4000)
    # Energy over any stretch, interpolated between samples.
    assert sampler.energy_between(1000, 1010) == pytest.approx(3000)
    assert sampler.energy_between(1005, 1015) == pytest.approx(1500 + 2000)
    assert sampler.energy_between(1015, 1030) is None  # not sampled yet


async def _energy_and_time(sampler: GpuSampler) -> tuple[float, float | None]:
    # Read between two samples (a sample runs in a thread and holds the sampler's lock meanwhile).
    async with sampler._lock:
        return sampler.energy_j["GPU-00000000-fake-0000-0000-000000000000"], sampler.sampled_mono


async def test_energy_grows_while_the_sampler_runs(fake_nvml: FakeNvml, tmp_path: Path) -> None:
    sampler = fake_sampler(fake_nvml, tmp_path, interval=0.02)
    await sampler.start()
    try:
        await asyncio.sleep(0.3)
        first, at_first = await _energy_and_time(sampler)
        await asyncio.sleep(0.3)
        second, at_second = await _energy_and_time(sampler)
    finally:
        await sampler.stop()
    # 100 W between the samples the two readings come from, on the sampler's own clock: a sampler
    # running late on a loaded machine samples less often, never counts wrong.
    assert first > 0 and at_first is not None and at_second is not None and at_second > at_first
    assert second - first == pytest.approx(100 * (at_second - at_first))


def test_no_gpu_here_is_an_empty_list_with_a_reason(tmp_path: Path) -> None:
    sampler = GpuSampler(drm_root=tmp_path / "none", cli=False)  # the real pynvml: no NVIDIA driver here
    if sampler.sample():
        pytest.skip("this machine has an NVIDIA GPU")
    info = sampler.info()
    assert info["gpus"] == [] and "NVML" in info["reason"] and "no AMD or Intel GPU" in info["reason"]
    assert sampler.energy_between(0, 1) is None and not sampler.has_power()


def test_nvml_that_fails_to_start_is_a_reason_not_an_error(tmp_path: Path) -> None:
    sampler = fake_sampler(FakeNvml(fail_init=True), tmp_path)
    assert sampler.sample() == []
    assert "NVML Shared Library Not Found" in sampler.info()["reason"]


async def test_gpu_info_without_gpu_over_rest(api: httpx.AsyncClient) -> None:
    r = await api.get("/api/gpu-info")
    assert r.status_code == 200
    body = r.json()
    if body["gpus"]:
        pytest.skip("this machine has a GPU")
    assert body["reason"]


def test_amd_card_from_sysfs(tmp_path: Path) -> None:
    dev = tmp_path / "card1" / "device"
    (dev / "hwmon" / "hwmon3").mkdir(parents=True)
    (tmp_path / "card1-DP-1").mkdir()  # a connector, not a card
    nvidia = tmp_path / "card0" / "device"
    nvidia.mkdir(parents=True)
    (nvidia / "vendor").write_text("0x10de\n")
    files = {
        "vendor": "0x1002", "device": "0x744c", "mem_info_vram_used": str(3 * GIB),
        "mem_info_vram_total": str(24 * GIB), "gpu_busy_percent": "42",
        "hwmon/hwmon3/temp1_input": "51000", "hwmon/hwmon3/power1_average": "123000000",
        "hwmon/hwmon3/power1_cap": "300000000",
    }  # fmt: skip
    for name, value in files.items():
        (dev / name).write_text(value + "\n")
    (r,) = DrmSource(tmp_path).read()
    assert (r.vendor, r.name, r.source) == ("amd", "AMD GPU 0x744c", "sysfs")
    assert (r.memory_used, r.memory_total, r.utilization) == (3 * GIB, 24 * GIB, 42.0)
    assert (r.temperature_c, r.power_w, r.power_limit_w) == (51.0, 123.0, 300.0)


def test_sysfs_without_amd_or_intel(tmp_path: Path) -> None:
    with pytest.raises(SourceUnavailable):
        DrmSource(tmp_path)


def test_nvidia_smi_fallback(tmp_path: Path) -> None:
    script = tmp_path / "nvidia-smi"
    script.write_text(
        f"#!{sys.executable}\n"
        "import sys\n"
        "if any(a.startswith('--query-compute-apps') for a in sys.argv):\n"
        "    print('GPU-abc, 4242, 1024')\n"
        "else:\n"
        "    print('0, NVIDIA Smi GPU, GPU-abc, 2048, 16384, 17, 38, 61.5, [N/A]')\n"
    )
    script.chmod(0o755)
    (r,) = NvidiaSmiSource(str(script)).read()
    assert (r.name, r.uuid, r.source) == ("NVIDIA Smi GPU", "GPU-abc", "nvidia-smi")
    assert (r.memory_used, r.memory_total) == (2048 * 1024**2, 16384 * 1024**2)
    assert (r.utilization, r.temperature_c, r.power_w, r.power_limit_w) == (17, 38, 61.5, None)
    assert r.processes == [(4242, 1024 * 1024**2)]


def _metric_samples(text: str) -> dict[str, list[Any]]:
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


async def test_instance_gpu_memory_and_gpu_gauges(
    gpu_services: LlamaMan, gpu_api: httpx.AsyncClient, fake_nvml: FakeNvml
) -> None:
    r = await gpu_api.post("/api/instances", json={"model_path": "tiny-a.gguf", "ctx_size": 256})
    assert r.status_code == 201, r.text
    m = gpu_services.supervisor.get(r.json()["id"])
    assert await m.proc.wait_for({InstanceState.HEALTHY, InstanceState.FAILED}, 30) == InstanceState.HEALTHY
    assert m.proc.pid is not None
    fake_nvml.set_process(0, m.proc.pid, 3 * GIB)
    fake_nvml.set_process(1, m.proc.pid, 1 * GIB)
    fake_nvml.set_process(1, 999_999, 5 * GIB)  # someone else's
    await gpu_services.telemetry.gpu.refresh()
    await gpu_services.telemetry.refresh_usage()

    view = (await gpu_api.get(f"/api/instances/{m.id}")).json()
    assert view["gpu_memory_bytes"] == 4 * GIB
    assert view["gpu_memory_by_gpu"] == {"0": 3 * GIB, "1": 1 * GIB}
    assert view["rss_bytes"] > 0 and "cpu_percent" in view
    listed = {i["id"]: i for i in (await gpu_api.get("/api/instances")).json()}
    assert listed[m.id]["gpu_memory_bytes"] == 4 * GIB

    info = (await gpu_api.get("/api/gpu-info")).json()
    procs = {p["pid"]: p for p in info["gpus"][1]["processes"]}
    assert procs[m.proc.pid]["instance_id"] == m.id and procs[999_999]["instance_id"] is None

    samples = _metric_samples((await gpu_api.get("/metrics")).text)
    used = {s.labels["gpu"]: s.value for s in samples["llamaman_gpu_memory_used_bytes"]}
    assert used == {"0": 2 * GIB, "1": 1 * GIB}
    total = {s.labels["name"]: s.value for s in samples["llamaman_gpu_memory_total_bytes"]}
    assert total == {"NVIDIA Fake A100": 80 * GIB, "NVIDIA Fake RTX 4090": 24 * GIB}
    power = {s.labels["gpu"]: s.value for s in samples["llamaman_gpu_power_watts"]}
    assert power == {"0": 100, "1": 200}
    temps = {s.labels["gpu"]: s.value for s in samples["llamaman_gpu_temperature_celsius"]}
    util = {s.labels["gpu"]: s.value for s in samples["llamaman_gpu_utilization_percent"]}
    assert temps == {"0": 45, "1": 60} and util == {"0": 35, "1": 70}
    energy = {s.labels["gpu"]: s.value for s in samples["llamaman_gpu_energy_joules"]}
    assert energy["0"] > 0 and energy["1"] > energy["0"]
    vram = {s.labels["instance"]: s.value for s in samples["llamaman_instance_gpu_memory_bytes"]}
    assert vram == {m.id: 4 * GIB}
