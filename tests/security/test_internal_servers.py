"""The llama-servers LlamaMan starts: each keeps its own key (nobody else reaches it on its internal
port), its CORS answer never reaches a browser, it inherits none of LlamaMan's secrets, ports are
reused only once released, and the health check tells our server from any other."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from llamaman.app import LlamaMan
from llamaman.core.config import Settings
from llamaman.core.state import InstanceState
from llamaman.instances.launch import LaunchSettings
from llamaman.instances.ownership import instance_environment
from llamaman.instances.process import LlamaProcess
from llamaman.proxy.app import ProxyServer
from tests.helpers import admin_headers

S = InstanceState
FAKE_SERVER = Path(__file__).parent.parent / "fakes" / "fake_llama_server.py"

SECRETS = {
    "LLAMAMAN_ADMIN_PASSWORD": "admin-password-s3cret",
    "LLAMAMAN_API_KEYS": "llm-env-key-s3cret",
    "SECRET_KEY": "session-signing-s3cret",
    "HF_TOKEN": "hf_token_s3cret",
    "AWS_SECRET_ACCESS_KEY": "aws-s3cret",
    # llama-server's flags by another name: never inherited.
    "LLAMA_ARG_TOOLS": "all,exec-shell-s3cret",
    "LLAMA_ARG_PATH": "/srv/served-s3cret",
}
ORIGIN = "http://evil.example"
CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 6}


@pytest.fixture
def settings(
    make_settings: Callable[..., Settings], llama_server_bin: str, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    return make_settings(LLAMA_SERVER_BIN=llama_server_bin)


@pytest.fixture
async def http(proxy: ProxyServer, services: LlamaMan) -> AsyncIterator[httpx.AsyncClient]:
    headers = await admin_headers(services)
    async with httpx.AsyncClient(base_url=proxy.url, headers=headers, timeout=60, trust_env=False) as c:
        yield c


async def _healthy(services: LlamaMan, model: str = "tiny-a.gguf") -> Any:
    m = await services.supervisor.launch(LaunchSettings(model_path=model, ctx_size=512))
    assert await m.proc.wait_for({S.HEALTHY, S.FAILED}, timeout=60) == S.HEALTHY, m.proc.error
    return m


async def test_internal_port_refuses_requests_without_the_servers_key(services: LlamaMan) -> None:
    m = await _healthy(services)
    assert m.record.internal_port is not None and m.proc.api_key
    async with httpx.AsyncClient(base_url=m.base_url, trust_env=False, timeout=30) as c:
        for method, path in [
            ("POST", "/v1/chat/completions"),
            ("POST", "/completion"),
            ("GET", "/props"),
            ("GET", "/slots"),
            ("GET", "/metrics"),
        ]:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Origin": ORIGIN}):
                r = await c.request(method, path, json=CHAT if method == "POST" else None, headers=headers)
                assert r.status_code == 401, (path, headers, r.status_code, r.text)
        # llama-server keeps its model list public in some builds, as it does /health: it may answer
        # without the key, but with the listing alone, never the key or a secret of LlamaMan's.
        for headers in ({}, {"Origin": ORIGIN}):
            r = await c.get("/v1/models", headers=headers)
            assert r.status_code in (200, 401), (headers, r.status_code, r.text)
            assert m.proc.api_key not in r.text and not any(v in r.text for v in SECRETS.values())
        # With its key it answers: the key is what keeps others out, not a broken server.
        r = await c.post("/v1/chat/completions", json=CHAT, headers=m.proc.auth_headers)
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"].startswith("abc")


async def test_the_key_is_new_for_every_run_and_never_on_the_command_line(services: LlamaMan) -> None:
    m = await _healthy(services)
    first = m.proc.api_key
    assert first and first not in " ".join(m.proc.argv)
    assert first not in " ".join(psutil.Process(m.proc.pid).cmdline())
    await services.supervisor.restart(m.id)
    assert await m.proc.wait_for({S.HEALTHY, S.FAILED}, timeout=60) == S.HEALTHY
    assert m.proc.api_key and m.proc.api_key != first


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
async def test_answers_through_llamaman_without_llama_servers_cors_headers(
    services: LlamaMan, http: httpx.AsyncClient, stream: bool
) -> None:
    m = await _healthy(services)
    base = str(http.base_url).rstrip("/")
    targets = [
        ("POST", f"{base}/v1/chat/completions", {**CHAT, "model": "tiny-a", "stream": stream}),
        ("POST", f"{base}/upstream/tiny-a/v1/chat/completions", {**CHAT, "stream": stream}),
        ("POST", f"http://127.0.0.1:{m.record.port}/v1/chat/completions", {**CHAT, "stream": stream}),
        ("POST", f"{base}/completion", {"model": "tiny-a", "prompt": "hi", "n_predict": 4, "stream": stream}),
    ]
    if not stream:
        targets.append(("GET", f"{base}/upstream/tiny-a/props", None))
    for method, url, body in targets:
        r = await http.request(method, url, json=body, headers={"Origin": ORIGIN})
        assert r.status_code == 200, (url, r.text)
        leaked = {k: v for k, v in r.headers.items() if k.lower().startswith("access-control-")}
        assert leaked == {}, (url, leaked)
        assert "content" in r.text or method == "GET", (url, r.text[:200])
    # A preflight is not answered by llama-server's CORS either.
    r = await http.options(
        "/v1/chat/completions", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"}
    )
    assert r.headers.get("access-control-allow-origin") != ORIGIN


async def test_a_server_inherits_none_of_llamamans_secrets(services: LlamaMan) -> None:
    m = await _healthy(services)
    env = psutil.Process(m.proc.pid).environ()
    for name, value in SECRETS.items():
        assert name not in env, name
        assert all(value not in v for v in env.values()), name
    auth_keys = services.auth.keys if hasattr(services, "auth") else None
    assert auth_keys is not None
    assert env["LLAMA_API_KEY"] == m.proc.api_key
    assert not any(k.startswith("LLAMA_ARG_") for k in env)
    # What it needs to run is still there.
    assert "PATH" in env


async def test_a_later_llamaman_adopts_a_running_server_with_its_key(
    settings: Settings, services: LlamaMan
) -> None:
    m = await _healthy(services)
    key, pid = m.proc.api_key, m.proc.pid
    second = LlamaMan(settings)
    second.supervisor.settings = settings
    adopted = LlamaProcess(
        m.id,
        m.proc.argv,
        env={},
        log_path=m.proc.log_path,
        health_url=m.proc.health_url,
        http=services.http,
        load_timeout=10,
        health_timeout=3,
        stop_grace=3,
        alias=m.record.model_name,
    )
    assert pid is not None and adopted.adopt(pid)
    assert adopted.api_key == key
    assert await adopted.wait_for({S.HEALTHY}, timeout=10) == S.HEALTHY
    await adopted.close()


# ---- ports ----------------------------------------------------------------------------------------


async def _ask(http: httpx.AsyncClient, model: str) -> str:
    r = await http.post("/v1/chat/completions", json={**CHAT, "model": model})
    assert r.status_code == 200, r.text
    return str(r.json()["choices"][0]["message"]["content"])


async def test_a_model_whose_ports_were_reused_is_answered_by_itself(
    services: LlamaMan, http: httpx.AsyncClient
) -> None:
    assert (await _ask(http, "tiny-a")).startswith("abc")
    [a] = services.supervisor.list()
    old_port, old_internal = a.record.port, a.record.internal_port
    await services.router.unload("tiny-a")
    assert a.state == S.STOPPED

    # A manual launch takes the ports the first model gave back.
    b = await _healthy(services, "tiny-b.gguf")
    assert (b.record.port, b.record.internal_port) == (old_port, old_internal)

    # The first model comes back on ports of its own and answers itself; the second is untouched.
    assert (await _ask(http, "tiny-a")).startswith("abc")
    assert a.state == S.HEALTHY
    assert a.record.port != b.record.port and a.record.internal_port != b.record.internal_port
    assert services.supervisor.ports.owner(a.record.port) == a.id
    assert services.supervisor.ports.owner(b.record.port) == b.id
    assert (await _ask(http, "tiny-b")).startswith("zyx")
    async with httpx.AsyncClient(trust_env=False, timeout=30, headers=http.headers) as c:
        for m, prefix in ((a, "abc"), (b, "zyx")):
            r = await c.post(f"http://127.0.0.1:{m.record.port}/v1/chat/completions", json=CHAT)
            assert r.json()["choices"][0]["message"]["content"].startswith(prefix)


async def test_the_health_check_does_not_take_another_server_for_ours(services: LlamaMan) -> None:
    a = await _healthy(services, "tiny-a.gguf")
    b = await _healthy(services, "tiny-b.gguf")
    assert await a.proc._is_ours() and await b.proc._is_ours()
    real_url, real_key = a.proc.health_url, a.proc.api_key
    try:
        a.proc.health_url = b.proc.health_url  # a's probe lands on b's server
        assert not await a.proc._is_ours()  # b does not know a's key
        a.proc._set_key(b.proc.api_key)
        assert not await a.proc._is_ours()  # with b's key: b serves another model
    finally:
        a.proc.health_url = real_url
        a.proc._set_key(real_key)


async def test_a_server_that_cannot_bind_its_port_fails_visibly(
    services: LlamaMan, tmp_path: Path, models_dir: Path
) -> None:
    # Another program (a stand-in llama-server with no key) holds the port our server is told to use.
    from llamaman.testing.netports import free_block

    port = free_block(1, 23000)
    squatter = await asyncio.create_subprocess_exec(
        sys.executable, str(FAKE_SERVER), "--port", str(port), stdout=asyncio.subprocess.DEVNULL
    )
    try:
        async with httpx.AsyncClient(trust_env=False) as c:
            for _ in range(100):
                try:
                    if (await c.get(f"http://127.0.0.1:{port}/health")).status_code == 200:
                        break
                except httpx.HTTPError:
                    await asyncio.sleep(0.05)
        assert services.supervisor.binary is not None
        proc = LlamaProcess(
            "squatted",
            [*services.supervisor.binary.argv_prefix, "-m", str(models_dir / "tiny-a.gguf"),
             "--host", "127.0.0.1", "--port", str(port), "-c", "256", "--alias", "tiny-a"],
            env=instance_environment("squatted", services.supervisor._owner, None, services.settings),
            log_path=tmp_path / "squatted.log",
            health_url=f"http://127.0.0.1:{port}/health",
            http=services.http,
            load_timeout=20,
            health_timeout=3,
            stop_grace=3,
            alias="tiny-a",
        )  # fmt: skip
        await proc.start()
        assert await proc.wait_for({S.HEALTHY, S.FAILED}, timeout=30) == S.FAILED
        assert proc.error
        await proc.stop()
        await proc.close()
    finally:
        squatter.kill()
        await squatter.wait()


def test_the_embedded_launcher_takes_its_key_from_the_environment_as_llama_server_does() -> None:
    xl = pytest.importorskip("xllamacpp")
    from llamaman.instances.xllama_flags import parse_flags
    from llamaman.instances.xllama_launcher import build_params

    ns, _ = parse_flags(["-m", "x.gguf"])
    assert list(build_params(ns, xl, environ={"LLAMA_API_KEY": "k1,k2"}).api_keys) == ["k1", "k2"]
    ns, _ = parse_flags(["-m", "x.gguf", "--api-key", "cli"])
    assert list(build_params(ns, xl, environ={"LLAMA_API_KEY": "env"}).api_keys) == ["cli"]
    ns, _ = parse_flags(["-m", "x.gguf"])
    assert list(build_params(ns, xl, environ={}).api_keys) == []
