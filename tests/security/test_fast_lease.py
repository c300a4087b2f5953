"""A request that finds its model loaded with a free place is leased at once, without queueing: that
shortcut must not be a way around a key's model list or an instance's place limit."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from llamaman.app import LlamaMan
from tests.helpers import asgi

pytestmark = pytest.mark.auth

HI = [{"role": "user", "content": "hi"}]


def leases_on(services: LlamaMan, model_path: str) -> list[str]:
    """The leases the router hands out from now on for ``model_path``, fast or waiting path alike."""
    router: Any = services.router
    taken: list[str] = []
    begin = router._begin

    def counting(m: Any, gate: Any, load_ns: int) -> Any:
        lease = begin(m, gate, load_ns)
        if lease.instance.record.model_path == model_path:
            taken.append(m.id)
        return lease

    router._begin = counting
    return taken


def requests_for(name: str) -> Iterator[tuple[str, dict[str, Any]]]:
    yield "/v1/chat/completions", {"model": name, "messages": HI, "max_tokens": 4}
    yield "/v1/completions", {"model": name, "prompt": "hi", "max_tokens": 4}
    yield "/api/chat", {"model": name, "messages": HI, "stream": False}
    yield "/api/generate", {"model": name, "prompt": "hi", "stream": False}
    yield "/v1/messages", {"model": name, "messages": HI, "max_tokens": 4}


async def test_a_key_for_one_model_gets_no_place_on_another_that_sits_loaded_and_idle(box: LlamaMan) -> None:
    await box.router.load("tiny-b")  # healthy, idle: a request for it would be leased at once
    taken = leases_on(box, "tiny-b.gguf")
    _, key = await box.auth.keys.create("only-a", allowed_models=["tiny-a"])
    h = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    names = ["tiny-b", "tiny-b:latest", "tiny-b.gguf", " tiny-b ", "TINY-B", "tiny-b\u200b", "./tiny-b.gguf"]
    async with asgi(box) as c:
        for name in names:
            for path, body in requests_for(name):
                r = await c.post(path, json=body, headers=h)
                assert r.status_code in (400, 403, 404), (path, repr(name), r.status_code, r.text)
        # The same name spelt with JSON escapes, and a body naming the allowed model first and the
        # other one last (a parser that kept the first would check one model and run the other).
        for raw in (
            b'{"model": "tiny-\\u0062", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}',
            b'{"model": "tiny-a", "messages": [{"role": "user", "content": "hi"}], "model": "tiny-b"}',
        ):
            r = await c.post("/v1/chat/completions", content=raw, headers=h)
            assert r.status_code in (400, 403), (raw, r.status_code, r.text)
    assert taken == []  # not one place on tiny-b, by either path
    b = next(m for m in box.supervisor.list() if m.record.model_path == "tiny-b.gguf")
    assert box.router.slot(b).inflight == 0 and box.router.gate_for(b).active == 0


async def test_a_held_last_place_sends_every_other_request_to_the_refusal_not_past_it(box: LlamaMan) -> None:
    await box.presets.put("tiny-a.gguf", {"max_concurrent": 1, "max_queue_depth": 0})
    held = await box.router.acquire("tiny-a")  # the one place, taken
    gate = box.router.gate_for(held.instance)
    _, key = await box.auth.keys.create("user", allowed_models=["tiny-a"])
    h = {"Authorization": f"Bearer {key}"}
    async with asgi(box) as c:
        for path, body in requests_for("tiny-a"):
            r = await c.post(path, json=body, headers=h)
            assert r.status_code == 429, (path, r.status_code, r.text)
            assert gate.active == 1 and box.router.slot(held.instance).running == 1
        held.release()
        path, body = next(requests_for("tiny-a"))
        r = await c.post(path, json=body, headers=h)
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"].startswith("abc")
    assert gate.active == 0 and box.router.slot(held.instance).inflight == 0
