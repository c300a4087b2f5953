"""The scheduler trace reader behind ``bench/hops.py``: which wake-ups make a request's hops."""

from __future__ import annotations

import pytest

from bench.hops import hops, wake_ups

# What ``perf sched timehist -w`` prints: a client (pid 100) asks LlamaMan (200), whose event loop
# writes to its llama-server (300, HTTP thread 301); llama-server answers, LlamaMan answers the
# client. Then the client asks the direct server (400) once. Run-time lines are not wake-ups.
TRACE = """\
           time    cpu  task name                       wait time  sch delay   run time
     10.000100 [0001]  python[100]                                          awakened: python[200]
     10.000150 [0001]  python[100]                       8.654      0.012      0.882
     10.000300 [0000]  python[200]                                          awakened: python[210/200]
     10.000550 [0000]  python[200]                                          awakened: llama-server[301/300]
     10.004000 [0001]  llama-server[301/300]                                awakened: llama-server[300]
     10.008000 [0001]  llama-server[301/300]                                awakened: python[200]
     10.008200 [0000]  python[200]                                          awakened: python[100]
     10.009000 [0001]  python[100]                                          awakened: llama-server[401/400]
     10.016000 [0000]  llama-server[401/400]                                awakened: python[100]
     10.016100 [0000]  kworker/u8:3-kv[2323]                                awakened: python[100]
"""


def test_a_request_through_llamaman_shows_its_way_in_its_way_out_and_each_round_trip() -> None:
    h = hops(wake_ups(TRACE), 100, 200, {300}, {"direct": {400}, "llamaman": {200}})
    # In: from the client's bytes to the write to llama-server, not to another thread of LlamaMan's.
    assert h.way_in == [pytest.approx(450e-6)]
    assert h.way_out == [pytest.approx(200e-6)]
    assert h.round_trip["llamaman"] == [pytest.approx(8.1e-3)]
    assert h.round_trip["direct"] == [pytest.approx(7e-3)]


def test_wake_ups_name_thread_and_process_whatever_the_command_is_called() -> None:
    events = list(wake_ups(TRACE))
    assert events[0] == (10.0001, (100, 100), (200, 200))
    assert events[2][2] == (301, 300)
    assert events[-1][1] == (2323, 2323)
