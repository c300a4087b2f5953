from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from llamaman.upstream.client import UpstreamClient
from tests.upstream.answering import Server, listening


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    s = Server()
    async with listening(s):
        yield s


@pytest.fixture
async def client() -> AsyncIterator[UpstreamClient]:
    c = UpstreamClient()
    yield c
    await c.aclose()
