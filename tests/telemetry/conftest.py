"""Telemetry fixtures: services whose GPU sampler reads the stand-in NVML, and a listening proxy."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from llamaman.app import LlamaMan
from llamaman.core.config import Settings
from llamaman.proxy.app import ProxyServer
from llamaman.telemetry.gpu import GpuSampler
from llamaman.testing.fake_nvml import FakeNvml
from tests.helpers import admin_headers


@pytest.fixture
def fake_nvml() -> FakeNvml:
    return FakeNvml()


def fake_sampler(nvml: FakeNvml, tmp_path: Path, interval: float = 0.05) -> GpuSampler:
    # No sysfs and no command-line tools: only the stand-in NVML answers, whatever the machine has.
    return GpuSampler(nvml=nvml, drm_root=tmp_path / "no-drm", cli=False, interval=interval)


@pytest.fixture
async def gpu_services(settings: Settings, fake_nvml: FakeNvml, tmp_path: Path) -> AsyncIterator[LlamaMan]:
    svc = LlamaMan(settings)
    svc.telemetry.gpu = fake_sampler(fake_nvml, tmp_path)
    await svc.start()
    try:
        yield svc
    finally:
        await svc.stop()


@pytest.fixture
async def gpu_api(gpu_services: LlamaMan) -> AsyncIterator[httpx.AsyncClient]:
    from llamaman.app import create_app

    app = create_app(gpu_services, manage_lifecycle=False)
    headers = await admin_headers(gpu_services)
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://llamaman.test", headers=headers) as c:
        yield c


@pytest.fixture
async def http(services: Any, proxy: ProxyServer) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the listening proxy, with an API key named "tests"."""
    headers = await admin_headers(services)
    async with httpx.AsyncClient(base_url=proxy.url, timeout=60, trust_env=False, headers=headers) as client:
        yield client
