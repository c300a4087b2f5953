"""A request to a model server cancelled at the very moment its connection is made stays cancelled.

An administrator's cancel (or a client leaving) cancels the task that sends the request upstream.
If the cancel lands as the connection to llama-server completes, the request must still end then,
not go on to wait for the whole answer: a server that accepts and never answers shows which.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from llamaman.upstream.client import UpstreamClient


async def test_a_cancel_landing_as_the_connection_is_made_is_not_lost(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def silent(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # reads nothing, answers nothing

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    real = loop.create_connection
    sending: list[asyncio.Task[Any]] = []

    async def connect_then_cancel(*args: Any, **kwargs: Any) -> Any:
        made = await real(*args, **kwargs)
        sending[0].cancel()  # the cancel arrives in the same turn the connection completes
        return made

    monkeypatch.setattr(loop, "create_connection", connect_then_cancel)
    client = UpstreamClient()
    try:
        sending.append(
            asyncio.create_task(client.request("POST", f"http://127.0.0.1:{port}", "/x", content=b"{}"))
        )
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(sending[0], 5)  # a lost cancel waits for an answer that never comes
    finally:
        await client.aclose()
        for w in accepted:
            w.close()
        server.close()
        await server.wait_closed()
