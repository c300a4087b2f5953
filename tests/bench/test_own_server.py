"""``own_server``: the llama-server behind a relay process, found among its children for P1's
comparison of the relay with its own server asked directly."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import psutil
import pytest

from bench.scenarios import own_server

# A child that calls itself llama-server, as the one a relay launches does, holding its port and key.
_CHILD = 'exec -a llama-server "$PY" -c "import time; time.sleep(60)" --host 127.0.0.1 --port 9123'


def _parent(child: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PY": sys.executable, "LLAMA_API_KEY": "key-of-the-instance"}
    return subprocess.Popen(["bash", "-c", f"{child} & wait"], env=env)


def _stop(parent: subprocess.Popen[bytes]) -> None:
    for kid in psutil.Process(parent.pid).children(recursive=True):
        kid.kill()
    parent.kill()
    parent.wait()


def _wait_for_child(parent: subprocess.Popen[bytes]) -> None:
    proc = psutil.Process(parent.pid)
    for _ in range(500):
        kids = proc.children(recursive=True)
        if kids and kids[0].cmdline()[:1] == ["llama-server"]:
            return
        time.sleep(0.01)  # a process's name changing is no event to wait on
    raise AssertionError("the child never started")


@pytest.fixture
def relay() -> Iterator[subprocess.Popen[bytes]]:
    parent = _parent(_CHILD)
    try:
        _wait_for_child(parent)
        yield parent
    finally:
        _stop(parent)


def test_the_relays_own_server_is_asked_on_its_port_with_the_key_the_relay_gave_it(
    relay: subprocess.Popen[bytes],
) -> None:
    target = own_server(relay.pid, "relay's llama-server")
    assert target.url == "http://127.0.0.1:9123"
    assert target.headers == {"Authorization": "Bearer key-of-the-instance"}
    assert target.name == "relay's llama-server"


def test_a_process_without_a_llama_server_child_is_an_error_not_a_wrong_target() -> None:
    parent = _parent('"$PY" -c "import time; time.sleep(60)"')
    try:
        with pytest.raises(RuntimeError, match="runs no llama-server"):
            own_server(parent.pid, "nothing")
    finally:
        _stop(parent)
