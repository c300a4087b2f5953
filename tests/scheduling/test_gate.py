"""The concurrency gate, deterministically: no servers, just the event loop."""

from __future__ import annotations

import asyncio

import pytest

from llamaman.scheduling.gate import Gate, QueueFull


async def test_gate_serves_max_concurrent_queues_up_to_depth_and_refuses_the_rest() -> None:
    gate = Gate(max_concurrent=1, max_queue=2)
    release = asyncio.Event()
    served: list[int] = []

    async def request(i: int) -> str:
        try:
            await gate.acquire()
        except QueueFull:
            return "429"
        try:
            served.append(i)
            await release.wait()
            return "200"
        finally:
            gate.release()

    tasks = [asyncio.create_task(request(i)) for i in range(10)]
    await asyncio.sleep(0)
    assert (gate.active, gate.queued) == (1, 2)
    release.set()
    results = await asyncio.gather(*tasks)
    assert results.count("200") == 3 and results.count("429") == 7
    assert served == [0, 1, 2]  # FIFO
    assert (gate.active, gate.queued) == (0, 0)


async def test_unlimited_gate_never_queues() -> None:
    gate = Gate()
    for _ in range(100):
        await gate.acquire()
    assert gate.active == 100 and gate.queued == 0
    for _ in range(100):
        gate.release()
    assert gate.active == 0


async def test_a_waiter_that_gives_up_leaves_the_queue_and_the_slot_moves_on() -> None:
    gate = Gate(max_concurrent=1, max_queue=5)
    await gate.acquire()
    impatient = asyncio.create_task(gate.acquire())
    patient = asyncio.create_task(gate.acquire())
    await asyncio.sleep(0)
    assert gate.queued == 2
    impatient.cancel()
    with pytest.raises(asyncio.CancelledError):
        await impatient
    assert gate.queued == 1
    gate.release()
    await patient
    assert gate.active == 1 and gate.queued == 0
    gate.release()
    assert gate.active == 0


async def test_raising_the_limit_admits_waiters_at_once() -> None:
    gate = Gate(max_concurrent=1, max_queue=5)
    await gate.acquire()
    waiter = asyncio.create_task(gate.acquire())
    await asyncio.sleep(0)
    gate.configure(2, 5)
    await asyncio.wait_for(waiter, 1)
    assert gate.active == 2


async def test_a_place_taken_without_waiting_never_jumps_the_queue() -> None:
    gate = Gate(max_concurrent=1, max_queue=5)
    assert gate.try_acquire() and gate.active == 1
    assert not gate.try_acquire()  # full
    waiter = asyncio.create_task(gate.acquire())
    await asyncio.sleep(0)
    gate.configure(2, 5)  # room again, handed to the waiter first
    await asyncio.wait_for(waiter, 1)
    gate.configure(3, 5)
    patient = asyncio.create_task(gate.acquire())
    gate.configure(2, 5)
    await asyncio.sleep(0)
    assert gate.queued == 1 and not gate.try_acquire()  # someone waits: no place taken past them
    gate.release()
    await asyncio.wait_for(patient, 1)
    assert gate.active == 2 and gate.queued == 0
