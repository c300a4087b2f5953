"""A fault of the fast lane's own, in front of a real llama-server: the lane decides from the HTTP
parser's callbacks, where an exception would drop the connection with nothing said. The full path
takes the request instead, and whatever the lane had taken (a place, a request already written to
llama-server) is given back."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from llamaman.app import LlamaMan
from llamaman.testing.tiny_gguf import expected_text
from tests.proxy.lane_ports import Ports, client

pytestmark = pytest.mark.llama

HI = [{"role": "user", "content": "hi"}]


def chat(n: int) -> dict[str, Any]:
    return {"model": "tiny-a", "messages": HI, "max_tokens": n}


# Each step of the lane's decision, failing once it has done its work (a place taken, the request
# written to llama-server): except the place itself, which fails before it is taken.
STEPS = [("admit", True), ("ready", True), ("lease", False), ("exchange", True), ("send_now", True)]


@pytest.mark.parametrize(("step", "after_work"), STEPS, ids=[s for s, _ in STEPS])
async def test_a_fault_in_the_lanes_decision_leaves_the_request_to_the_full_path_with_nothing_held(
    services: LlamaMan, proxy_pair: Ports, caplog: pytest.LogCaptureFixture, step: str, after_work: bool
) -> None:
    m = await services.router.load("tiny-a")
    lane: Any = proxy_pair.lane.lane
    real = getattr(lane, step)
    faults = 0

    def faulty(*args: Any) -> Any:
        nonlocal faults
        if faults == 0:
            faults += 1
            if after_work:
                real(*args)
            raise RuntimeError("a fault of the lane's own")
        return real(*args)

    setattr(lane, step, faulty)
    _, key = await services.auth.keys.create("faults")
    with caplog.at_level(logging.ERROR, logger="llamaman.proxy.fast_protocol"):
        async with client(proxy_pair.lane.url, {"Authorization": f"Bearer {key}"}) as c:
            first = await c.post("/v1/chat/completions", json=chat(3))
            # The same connection goes on: the next request takes the lane again.
            second = await c.post("/v1/chat/completions", json=chat(4))
    assert first.status_code == 200, first.text
    assert first.json()["choices"][0]["message"]["content"] == expected_text("A", 3)
    assert second.json()["choices"][0]["message"]["content"] == expected_text("A", 4)
    assert faults == 1 and proxy_pair.taken == 1  # the first went the full way, the second the lane's
    assert "the fast lane failed" in caplog.text
    # Nothing the failed step took is still held: no place, no request in flight.
    assert services.router.slot(m).inflight == 0 and len(services.relay.inflight) == 0
