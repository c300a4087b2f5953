from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from llamaman.upstream.client import UpstreamClient
from tests.upstream.answering import Server


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    s = Server()
    listening = await asyncio.start_server(s.serve, "127.0.0.1", 0)
    s.url = f"http://127.0.0.1:{listening.sockets[0].getsockname()[1]}"
    yield s
    for w in s.writers:
        w.close()
    listening.close()


@pytest.fixture
async def client() -> AsyncIterator[UpstreamClient]:
    c = UpstreamClient()
    yield c
    await c.aclose()
