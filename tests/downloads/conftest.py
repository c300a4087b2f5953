"""Fixtures for download tests: a fake Hugging Face hub and LlamaMan services pointed at it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest

from llamaman.app import LlamaMan
from llamaman.core.config import Settings
from llamaman.downloads.manager import Job
from llamaman.testing.fake_hub import FakeHub
from tests.conftest import find_llama_server

# Two tiny quantizations of one model, a split model, and a 3 MB one for speed tests.
BIG_SIZE = 3_000_000


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    with FakeHub() as h:
        h.add_model("user/repo", "tiny-Q4_K_M.gguf", "A")
        h.add_model("user/repo", "tiny-Q8_0.gguf", "B")
        h.add_file("user/repo", "README.md", b"# tiny\n")
        h.add_model("user/split", "split-Q4_K_M.gguf", "A", n_parts=3)
        h.add_model("user/big", "big-Q4_K_M.gguf", "A", pad_to=BIG_SIZE)
        yield h


@pytest.fixture
def hub_settings(make_settings: Callable[..., Settings], hub: FakeHub) -> Settings:
    extra: dict[str, Any] = {"HF_ENDPOINT": hub.url}
    if binary := find_llama_server():
        extra["LLAMA_SERVER_BIN"] = binary
    return make_settings(**extra)


async def start_services(settings: Settings) -> LlamaMan:
    svc = LlamaMan(settings)
    await svc.start()
    svc.downloads.backoff_base = 0.02
    return svc


@pytest.fixture
async def dl(hub_settings: Settings) -> AsyncIterator[LlamaMan]:
    svc = await start_services(hub_settings)
    try:
        yield svc
    finally:
        await svc.stop()


async def finished(svc: LlamaMan, job: Job, timeout: float = 20) -> Job:
    return await svc.downloads.wait(job.id, timeout)


async def until(check: Callable[[], bool], timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.02)


async def ask(base_url: str, text: str = "hi", *, headers: dict[str, str] | None = None) -> str:
    """One chat completion straight from a llama-server (``headers``: its own key)."""
    async with httpx.AsyncClient(trust_env=False) as c:
        r = await c.post(
            f"{base_url}/v1/chat/completions",
            json={"messages": [{"role": "user", "content": text}], "max_tokens": 8},
            headers=headers,
            timeout=30,
        )
        r.raise_for_status()
        return str(r.json()["choices"][0]["message"]["content"])


@contextlib.asynccontextmanager
async def served(app: Any) -> AsyncIterator[str]:
    """``app`` on a free local port for real HTTP clients; yields its base URL."""
    from llamaman.proxy.app import ProxyServer

    server = ProxyServer(app, "127.0.0.1", 0)
    await server.start()
    try:
        yield server.url
    finally:
        await server.stop()
