"""The instance usage sampler runs only while someone looks: an idle LlamaMan with nobody watching
does no sampling on a timer."""

from __future__ import annotations

import asyncio

import pytest

from llamaman.app import LlamaMan
from llamaman.telemetry import monitor


async def test_usage_is_sampled_only_while_someone_asks(
    services: LlamaMan, monkeypatch: pytest.MonkeyPatch
) -> None:
    telemetry = services.telemetry
    monkeypatch.setattr(monitor, "USAGE_INTERVAL", 0.01)
    monkeypatch.setattr(monitor, "USAGE_LINGER_S", 0.05)
    rounds: list[float] = []
    sampled = asyncio.Event()
    refresh = telemetry.refresh_usage

    async def counted() -> None:
        await refresh()
        rounds.append(asyncio.get_running_loop().time())
        sampled.set()

    telemetry.refresh_usage = counted  # type: ignore[method-assign]
    # Started and never asked: the sampler waits for a question, it does not poll.
    await asyncio.sleep(0.1)
    assert rounds == []

    telemetry.want_usage()  # what every instance view and /metrics scrape does
    await asyncio.wait_for(sampled.wait(), 10)
    # Once nobody has asked for longer than the linger time, the rounds stop again.
    for _ in range(500):
        count = len(rounds)
        await asyncio.sleep(0.1)
        if len(rounds) == count:
            break
    else:
        pytest.fail("the sampler kept sampling with nobody asking")
    assert 1 <= len(rounds)
