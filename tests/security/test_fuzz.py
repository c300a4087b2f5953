"""The fuzz run: generated requests against every route of every port end without a 5xx answer and
without a dropped connection.

* Schema-driven (schemathesis): every operation of the main app's and the proxy app's OpenAPI
  schemas, valid and invalid inputs, sent over real sockets with an admin key (some anonymous).
* Body-driven (hypothesis): the model endpoints (Ollama, OpenAI, Anthropic, llama-server's own,
  router mode, ``/upstream/``) on the proxy port, the main app and an instance port, with bodies that
  are random JSON, wrong types, huge and non-finite numbers, deep nesting, byte-order marks,
  UTF-16, truncation, and odd paths; real tiny models answer the ones that get through.

The suite runs a short pass; ``LLAMAMAN_FUZZ_CASES=5000 pytest tests/security/test_fuzz.py`` is the
long one (the cases are shared between the two generators). Each test prints its figures.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from llamaman.app import LlamaMan, create_app
from llamaman.core.config import Settings
from llamaman.core.state import InstanceState
from llamaman.instances.launch import LaunchSettings
from llamaman.proxy.app import ProxyServer, create_proxy_app
from llamaman.testing.fake_hub import FakeHub
from tests.helpers import admin_headers

pytestmark = [pytest.mark.auth, pytest.mark.timeout(3600)]

CASES = int(os.environ.get("LLAMAMAN_FUZZ_CASES", "400"))
SCHEMA_SHARE = 0.4
# Answers that stream forever (event streams) are not requests a fuzzer can finish.
SKIP_PATHS = ("/stream", "/api/events", "/models/sse")


@dataclass
class Tally:
    """What the run saw: statuses per surface, and every failure (5xx or dropped connection)."""

    statuses: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    cases: int = 0

    def record(self, surface: str, label: str, status: int | None, detail: str = "") -> None:
        self.cases += 1
        self.statuses[f"{surface} {status if status is not None else 'dropped'}"] += 1
        if status is None or status >= 500:
            self.failures.append(f"{surface} {label} -> {status}: {detail[:300]}")

    def report(self, name: str, started: float) -> str:
        by_status = ", ".join(f"{k}: {v}" for k, v in sorted(self.statuses.items()))
        return (
            f"{name}: {self.cases} cases in {time.monotonic() - started:.1f} s, "
            f"{len(self.failures)} failures (5xx or dropped); {by_status}"
        )


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    with FakeHub() as h:
        h.add_model("user/repo", "tiny-Q4_K_M.gguf", "A")
        yield h


@pytest.fixture
async def fuzz_services(
    make_settings: Callable[..., Settings], llama_server_bin: str, hub: FakeHub
) -> AsyncIterator[LlamaMan]:
    services = LlamaMan(
        make_settings(LLAMA_SERVER_BIN=llama_server_bin, HF_ENDPOINT=hub.url, REQUEST_TIMEOUT=60)
    )
    await services.start()
    try:
        yield services
    finally:
        await services.stop()


@pytest.fixture
async def ports(fuzz_services: LlamaMan) -> AsyncIterator[dict[str, int]]:
    """Real servers: the proxy app, the main app's routes, and one instance's own port."""
    main = ProxyServer(create_app(fuzz_services, manage_lifecycle=False), "127.0.0.1", 0)
    proxy = ProxyServer(create_proxy_app(fuzz_services), "127.0.0.1", 0)
    await main.start()
    await proxy.start()
    m = await fuzz_services.supervisor.launch(LaunchSettings(model_path="tiny-b.gguf", ctx_size=512))
    state = await m.proc.wait_for({InstanceState.HEALTHY, InstanceState.FAILED}, timeout=60)
    assert state == InstanceState.HEALTHY, m.proc.error
    try:
        yield {"main": main.port, "proxy": proxy.port, "instance": m.record.port}
    finally:
        await proxy.stop()
        await main.stop()


def send(
    client: httpx.Client, tally: Tally, surface: str, method: str, url: str, **kwargs: Any
) -> httpx.Response | None:
    label = f"{method} {url[:160]}"
    try:
        with client.stream(method, url, **kwargs) as r:
            body = b"".join(r.iter_bytes())
    except httpx.HTTPError as exc:
        detail = f"{type(exc).__name__}: {exc}; body={str(kwargs.get('content', ''))[:200]}"
        tally.record(surface, label, None, detail)
        return None
    tally.record(surface, label, r.status_code, body.decode("utf-8", "replace"))
    return r


# ---- schema-driven -------------------------------------------------------------------------------
def _schema_run(apps: dict[str, tuple[Any, int]], key: str, cases: int, tally: Tally) -> None:
    import schemathesis
    from schemathesis import GenerationMode

    strategies = []
    for surface, (app, port) in apps.items():
        schema = schemathesis.openapi.from_dict(app.openapi())
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategy = schema.as_strategy(generation_mode=mode)
            strategies.append(st.tuples(st.just(surface), st.just(port), strategy))
    rng = random.Random(7)
    client = httpx.Client(timeout=120, trust_env=False)

    def run(args: tuple[str, int, Any]) -> None:
        surface, port, case = args
        if any(p in case.formatted_path for p in SKIP_PATHS):
            return
        kwargs = case.as_transport_kwargs(base_url=f"http://127.0.0.1:{port}")
        headers = {k: v for k, v in (kwargs.pop("headers", None) or {}).items() if isinstance(v, str)}
        if rng.random() < 0.85:
            headers["Authorization"] = f"Bearer {key}"
        body: dict[str, Any] = {}
        if "json" in kwargs:
            body["content"] = json.dumps(kwargs.pop("json"), allow_nan=True).encode()
            headers.setdefault("Content-Type", "application/json")
        elif "data" in kwargs:
            data = kwargs.pop("data")
            body["content"] = data if isinstance(data, bytes) else str(data).encode()
        params = kwargs.pop("params", None)
        send(client, tally, surface, kwargs["method"], kwargs["url"], headers=headers, params=params, **body)

    try:
        _until(lambda: given(st.one_of(strategies))(run), cases, tally)
    finally:
        client.close()


def _until(make_run: Callable[[], Any], cases: int, tally: Tally) -> None:
    """Run ``run`` (a hypothesis test) with fresh seeds until ``cases`` requests were sent: one
    hypothesis run may stop short of max_examples once it has explored what it can."""
    attempt = 0
    while tally.cases < cases and attempt < 50:
        budget = settings(
            max_examples=cases - tally.cases, deadline=None, database=None,
            suppress_health_check=list(HealthCheck),
        )  # fmt: skip
        seed(attempt)(budget(make_run()))()
        attempt += 1


async def test_schema_fuzz(fuzz_services: LlamaMan, ports: dict[str, int]) -> None:
    key = (await admin_headers(fuzz_services))["Authorization"].removeprefix("Bearer ")
    apps = {
        "main": (create_app(fuzz_services, manage_lifecycle=False), ports["main"]),
        "proxy": (create_proxy_app(fuzz_services), ports["proxy"]),
    }
    tally = Tally()
    started = time.monotonic()
    await asyncio.to_thread(_schema_run, apps, key, max(50, int(CASES * SCHEMA_SHARE)), tally)
    print(tally.report("schema fuzz", started))
    assert not tally.failures, "\n".join(tally.failures[:30])


# ---- body-driven ---------------------------------------------------------------------------------
MODELS = [
    "tiny-a",
    "tiny-b",
    "tiny-a:latest",
    "embed/tiny-embed",
    "no-such-model",
    "",
    "TINY-A",
    "tiny-a.gguf",
]
ROUTES = [
    ("POST", "/api/chat"), ("POST", "/api/generate"), ("POST", "/api/embed"), ("POST", "/api/embeddings"),
    ("POST", "/api/show"), ("POST", "/api/copy"), ("POST", "/api/create"), ("POST", "/api/push"),
    ("POST", "/api/pull"), ("GET", "/api/tags"), ("GET", "/api/ps"), ("GET", "/api/version"),
    ("POST", "/v1/chat/completions"), ("POST", "/v1/completions"), ("POST", "/v1/embeddings"),
    ("POST", "/v1/messages"), ("POST", "/v1/messages/count_tokens"), ("POST", "/v1/responses"),
    ("GET", "/v1/models"), ("GET", "/v1/models/tiny-a"), ("POST", "/completion"), ("POST", "/completions"),
    ("POST", "/infill"), ("POST", "/chat/completions"), ("POST", "/tokenize"), ("POST", "/detokenize"),
    ("POST", "/embedding"), ("POST", "/embeddings"), ("POST", "/apply-template"), ("POST", "/rerank"),
    ("GET", "/props"), ("GET", "/slots"), ("GET", "/models"), ("POST", "/models/load"),
    ("POST", "/models/unload"), ("GET", "/upstream/tiny-a/health"), ("POST", "/upstream/tiny-a/completion"),
    ("GET", "/health"), ("GET", "/"),
]  # fmt: skip
ODD_SUFFIXES = [
    "",
    "",
    "",
    "%E2%82%AC",
    "%00",
    "%2F..%2F",
    "/x y",
    "%0D%0AX:1",
    "%FF",
    "/%25",
    "?model=tiny-a",
]

_scalars = st.one_of(
    st.none(), st.booleans(), st.text(max_size=20),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, -1, 1, 2**31, 2**63, 1e308, 1.5, "NaN", "1e400", ""]),
)  # fmt: skip
_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
_option_keys = st.sampled_from(
    ["num_ctx", "temperature", "top_k", "top_p", "seed", "num_predict", "stop", "repeat_penalty", "min_p",
     "num_keep", "mirostat", "num_gpu", "keep_alive"]
)  # fmt: skip
_message = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "assistant", "tool", "x"]) | _scalars},
    optional={"content": st.text(max_size=30) | _json, "images": _json, "tool_calls": _json},
)
_field_values = {
    "model": st.sampled_from(MODELS) | _scalars,
    "messages": st.lists(_message, max_size=3) | _json,
    "prompt": st.text(max_size=40) | _json,
    "input": st.text(max_size=20) | st.lists(st.text(max_size=10), max_size=3) | _json,
    "content": st.text(max_size=20) | _json,
    "tokens": st.lists(st.integers(min_value=-5, max_value=2**40), max_size=5) | _json,
    "options": st.dictionaries(_option_keys, _scalars, max_size=4) | _json,
    "stream": st.booleans() | _scalars,
    "max_tokens": st.integers(min_value=-5, max_value=2**64) | _scalars,
    "n_predict": st.integers(min_value=-5, max_value=64) | _scalars,
    "temperature": _scalars,
    "keep_alive": _scalars,
    "name": st.sampled_from(MODELS) | _scalars,
    "source": st.sampled_from(MODELS) | _scalars,
    "destination": st.text(max_size=12) | _scalars,
    "format": _json,
    "tools": _json,
    "system": _json,
    "documents": _json,
    "query": _json,
}
_body_obj = st.one_of(
    st.fixed_dictionaries(
        {"model": st.sampled_from(MODELS[:4])},
        optional={k: v for k, v in _field_values.items() if k != "model"},
    ),
    st.dictionaries(st.sampled_from(sorted(_field_values)), _scalars | _json, max_size=6),
    _json,
)


def _bounded(obj: Any) -> Any:
    """Generation limits for bodies that reach a model: a tiny model answers quickly, but a
    fuzzer asking for 2**64 tokens would keep it busy for the whole run."""
    if isinstance(obj, dict):
        for key in ("max_tokens", "n_predict", "num_predict", "max_completion_tokens"):
            if isinstance(obj.get(key), int | float) and not isinstance(obj.get(key), bool) and obj[key] > 16:
                obj[key] = 16
        if isinstance(obj.get("options"), dict):
            _bounded(obj["options"])
        obj.setdefault("max_tokens", 8)
        obj.setdefault("n_predict", 8)
        if isinstance(obj.get("options"), dict):
            obj["options"].setdefault("num_predict", 8)
    return obj


@st.composite
def raw_bodies(draw: st.DrawFn) -> bytes:
    kind = draw(
        st.sampled_from(["json"] * 6 + ["bom", "utf16", "deep", "nan", "truncated", "bytes", "empty"])
    )
    obj = _bounded(draw(_body_obj))
    text = json.dumps(obj, allow_nan=True)
    if kind == "bom":
        return b"\xef\xbb\xbf" + text.encode()
    if kind == "utf16":
        return text.encode("utf-16")
    if kind == "deep":
        n = draw(st.sampled_from([63, 64, 65, 1000, 100_000]))
        return b'{"model":"tiny-a","x":' + b"[" * n + b"]" * n + b"}"
    if kind == "nan":
        return text.replace("0", "NaN", 1).encode()
    if kind == "truncated":
        return text.encode()[: draw(st.integers(min_value=0, max_value=max(0, len(text) - 1)))]
    if kind == "bytes":
        return draw(st.binary(max_size=64))
    if kind == "empty":
        return b""
    return text.encode()


def _body_run(ports: dict[str, int], key: str, cases: int, tally: Tally) -> None:
    client = httpx.Client(timeout=120, trust_env=False)
    ctype = st.sampled_from(["application/json", "application/json", "text/plain", "", "multipart/form-data"])
    rng = random.Random(11)

    strategies = dict(
        surface=st.sampled_from(["proxy", "proxy", "main", "instance"]),
        route=st.sampled_from(ROUTES),
        suffix=st.sampled_from(ODD_SUFFIXES),
        body=raw_bodies(),
        content_type=ctype,
    )

    def run(surface: str, route: tuple[str, str], suffix: str, body: bytes, content_type: str) -> None:
        method, path = route
        if surface == "instance" and path.startswith("/api/") and path != "/api/tags":
            path = "/v1/chat/completions"  # llama-server's own paths are what an instance port serves
        url = f"http://127.0.0.1:{ports[surface]}{path}{suffix}"
        headers = {"Content-Type": content_type} if content_type else {}
        if rng.random() < 0.9:
            headers["Authorization"] = f"Bearer {key}"
        send(client, tally, surface, method, url, headers=headers, content=body if method != "GET" else None)

    try:
        _until(lambda: given(**strategies)(run), cases, tally)
    finally:
        client.close()


async def test_body_fuzz(fuzz_services: LlamaMan, ports: dict[str, int]) -> None:
    key = (await admin_headers(fuzz_services))["Authorization"].removeprefix("Bearer ")
    tally = Tally()
    started = time.monotonic()
    await asyncio.to_thread(_body_run, ports, key, max(100, CASES - int(CASES * SCHEMA_SHARE)), tally)
    print(tally.report("body fuzz", started))
    assert not tally.failures, "\n".join(tally.failures[:30])
