"""Proxy fixtures: a real listening proxy (uvicorn on a free port) over the started ``services``,
and clients for it that carry an API key (model endpoints need one by default)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest

from llamaman.proxy.app import ProxyServer
from tests.helpers import inference_headers


@pytest.fixture
async def auth_headers(services: Any) -> dict[str, str]:
    # Model clients hold inference keys, as Open WebUI does: what these tests drive must work with one.
    return await inference_headers(services)


@pytest.fixture
def api_key(auth_headers: dict[str, str]) -> str:
    return auth_headers["Authorization"].removeprefix("Bearer ")


@pytest.fixture
async def oai(proxy: ProxyServer, api_key: str) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key=api_key, max_retries=0, timeout=60)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def http(proxy: ProxyServer, auth_headers: dict[str, str]) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=proxy.url, headers=auth_headers, timeout=60, trust_env=False
    ) as client:
        yield client
