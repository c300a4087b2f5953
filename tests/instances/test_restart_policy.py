"""The crash-restart decisions: backoff, cap, fresh counts, first loads (no servers run)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from llamaman.core.state import InstanceState
from llamaman.instances.process import LlamaProcess
from llamaman.instances.recovery import CrashRecovery, RestartPolicy

S = InstanceState


def test_backoff_doubles_from_the_base_up_to_the_cap_and_stops_after_the_last_attempt() -> None:
    policy = RestartPolicy(max_attempts=5, base=0.5, cap=3.0)
    assert [policy.delay(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 3.0, 3.0, None]
    assert RestartPolicy(max_attempts=0).delay(1) is None


def test_only_a_long_healthy_run_starts_the_count_again() -> None:
    policy = RestartPolicy(stable_after=300)
    assert policy.fresh_count(301) and not policy.fresh_count(5) and not policy.fresh_count(None)


@pytest.fixture
async def proc(tmp_path: Path) -> LlamaProcess:
    return LlamaProcess(
        "i1", ["llama-server"], env={}, log_path=tmp_path / "i1.log", health_url="http://127.0.0.1:1/health",
        http=httpx.AsyncClient(), load_timeout=1, health_timeout=1, stop_grace=1,
    )  # fmt: skip


async def test_a_server_that_dies_while_serving_restarts_until_the_attempts_are_spent(
    proc: LlamaProcess,
) -> None:
    restarted: list[str] = []

    async def restart(iid: str) -> None:
        restarted.append(iid)

    recovery = CrashRecovery(RestartPolicy(max_attempts=2, base=0.01), restart)
    proc.state, proc.healthy_at, proc.error = S.HEALTHY, time.time(), "llama-server killed by SIGKILL"
    assert recovery.after_crash(proc) == S.RESTARTING
    assert proc.error.startswith("restarting in 0.01 s (attempt 1 of 2): llama-server killed")
    proc.state = S.RESTARTING  # what the process does with the answer
    await asyncio.sleep(0.05)
    assert restarted == ["i1"]

    # The restart's load dies too: a second attempt, then no more.
    proc.state, proc.error = S.STARTING, "llama-server exit code 1"
    assert recovery.after_crash(proc) == S.RESTARTING
    proc.state, proc.error = S.STARTING, "llama-server exit code 1"
    assert recovery.after_crash(proc) == S.FAILED
    assert proc.error == "gave up after 2 restart(s): llama-server exit code 1"
    await recovery.close()


async def test_a_server_that_dies_in_its_first_load_is_not_restarted(proc: LlamaProcess) -> None:
    recovery = CrashRecovery(RestartPolicy(), lambda iid: asyncio.sleep(0))
    proc.state, proc.error = S.STARTING, "llama-server exit code 1"
    assert recovery.after_crash(proc) == S.FAILED
    assert proc.error == "llama-server exit code 1"


async def test_a_stop_while_it_waits_cancels_the_restart(proc: LlamaProcess) -> None:
    restarted: list[str] = []

    async def restart(iid: str) -> None:
        restarted.append(iid)

    recovery = CrashRecovery(RestartPolicy(base=0.05), restart)
    proc.state = S.HEALTHY
    assert recovery.after_crash(proc) == S.RESTARTING
    proc.state = S.RESTARTING
    recovery.forget("i1")
    await asyncio.sleep(0.1)
    assert restarted == [] and recovery.attempts == {}
