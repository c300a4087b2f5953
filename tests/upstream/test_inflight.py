"""The in-flight registry and ``abortable``: pure asyncio, no servers."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from llamaman.core.exchange import REQUEST_ID, Exchange, Phase
from llamaman.upstream.inflight import (
    CANCELLED_BY_ADMIN,
    CLIENT_LEFT,
    InflightNotFound,
    InflightRegistry,
    RequestCancelled,
    abortable,
)


def test_a_request_keeps_its_queued_id_once_it_runs_and_the_list_shows_it_once() -> None:
    registry = InflightRegistry()
    ticket = Exchange("m", "queued")
    registry.queued(ticket)
    token = REQUEST_ID.set(ticket.id)
    try:
        running = Exchange("m", "/v1/chat/completions", stream=True)
    finally:
        REQUEST_ID.reset(token)
    registry.running(running)
    registry.forget(ticket)  # the queued placeholder leaving must not drop the running record
    [row] = registry.snapshot()
    assert row["id"] == ticket.id == running.id
    assert (row["state"], row["stream"], row["tokens"]) == ("running", True, 0)
    assert Exchange("m", "x").id != running.id  # outside that request, ids are fresh


def test_the_list_is_oldest_first_and_counts_tokens_so_far() -> None:
    registry = InflightRegistry()
    old, new = Exchange("a", "x", started=1.0), Exchange("b", "y", started=2.0)
    new.progress_tokens = 7
    registry.queued(new)
    registry.running(old)
    rows = registry.snapshot()
    assert [r["model"] for r in rows] == ["a", "b"]
    assert rows[1]["tokens"] == 7 and rows[1]["state"] == Phase.QUEUED


def test_cancelling_an_unknown_or_finished_request_is_not_found() -> None:
    registry = InflightRegistry()
    ex = Exchange("m", "x")
    registry.running(ex)
    registry.forget(ex)
    with pytest.raises(InflightNotFound):
        registry.cancel(ex.id)


async def test_abortable_returns_the_work_when_nothing_stops_it() -> None:
    async def work() -> int:
        await asyncio.sleep(0)
        return 42

    assert await abortable(Exchange("m", "x"), work()) == 42


async def test_an_abort_cancels_the_work_and_says_why() -> None:
    ex = Exchange("m", "x")
    stopped = asyncio.Event()

    async def work() -> None:
        try:
            await asyncio.sleep(60)
        finally:
            stopped.set()

    waiting = asyncio.ensure_future(abortable(ex, work()))
    await asyncio.sleep(0.01)
    assert ex.abort(CANCELLED_BY_ADMIN)
    with pytest.raises(RequestCancelled) as err:
        await waiting
    assert err.value.message == CANCELLED_BY_ADMIN and stopped.is_set()
    assert not ex.abort("again")  # one reason per request


async def test_a_client_hanging_up_aborts_the_work() -> None:
    ex = Exchange("m", "x")
    messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    messages.put_nowait({"type": "http.request", "body": b"", "more_body": False})

    waiting = asyncio.ensure_future(abortable(ex, asyncio.sleep(60), messages.get))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    messages.put_nowait({"type": "http.disconnect"})
    with pytest.raises(RequestCancelled, match=CLIENT_LEFT):
        await waiting
    assert ex.cancelled == CLIENT_LEFT


async def test_cancelling_the_caller_is_not_mistaken_for_an_abort() -> None:
    ex = Exchange("m", "x")
    waiting = asyncio.ensure_future(abortable(ex, asyncio.sleep(60)))
    await asyncio.sleep(0.01)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert ex.cancelled is None


async def test_an_exchange_aborted_before_the_work_starts_never_runs_it() -> None:
    ex = Exchange("m", "x")
    ex.abort(CANCELLED_BY_ADMIN)
    ran = False

    async def work() -> None:
        nonlocal ran
        ran = True

    with pytest.raises(RequestCancelled, match=CANCELLED_BY_ADMIN):
        await abortable(ex, work())
    assert not ran


async def test_an_abort_after_the_work_is_done_leaves_the_caller_alone() -> None:
    ex = Exchange("m", "x")

    async def work() -> int:
        await asyncio.sleep(0)
        return 7

    assert await abortable(ex, work()) == 7
    assert ex.abort(CANCELLED_BY_ADMIN)  # the request goes on (streaming, say) and is aborted later
    await asyncio.sleep(0.01)  # the caller's task was not cancelled by the late abort
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
