"""``llamaman worker``'s pure parts: which address it may listen on, what it registers, what it reads
from ggml-rpc-server's output, which binary it runs, how long it waits before a restart."""

from __future__ import annotations

from pathlib import Path

import pytest

from llamaman.cli import parse_args, run_worker
from llamaman.cluster.rpc_worker import (
    RpcDevice,
    WorkerSetupError,
    backoff_delay,
    check_bind_address,
    find_rpc_server,
    memory_of,
    parse_devices,
    parse_endpoint,
    parse_version,
    registered_address,
    rpc_server_argv,
)

MIB = 1024 * 1024

# What ggml-rpc-server v7 prints at start (measured on a CPU-only box), and a two-GPU variant.
CPU_OUTPUT = """Starting RPC server v7.0.0
  endpoint       : 127.0.0.1:50111
  local cache    : n/a
Devices:
  CPU: AMD EPYC (24105 MiB, 24105 MiB free)
  transport      : TCP
"""
GPU_OUTPUT = """Starting RPC server v7.0.0
  endpoint       : 10.0.0.7:50052
  local cache    : /root/.cache/llama.cpp/rpc/
Devices:
  CUDA0: NVIDIA GeForce RTX 4090 (24080 MiB, 23512 MiB free)
  CUDA1: NVIDIA GeForce RTX 3090 (24126 MiB, 1000 MiB free)
  transport      : TCP
"""


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


def test_devices_and_endpoint_are_read_from_the_servers_start_output() -> None:
    assert parse_devices(CPU_OUTPUT) == [RpcDevice("CPU", "AMD EPYC", 24105 * MIB, 24105 * MIB)]
    assert parse_endpoint(CPU_OUTPUT) == "127.0.0.1:50111"
    assert parse_version(CPU_OUTPUT) == "7.0.0"
    assert parse_devices(GPU_OUTPUT) == [
        RpcDevice("CUDA0", "NVIDIA GeForce RTX 4090", 24080 * MIB, 23512 * MIB),
        RpcDevice("CUDA1", "NVIDIA GeForce RTX 3090", 24126 * MIB, 1000 * MIB),
    ]
    # Output cut before the device list (a server that died at start): nothing, not a guess.
    assert parse_devices(CPU_OUTPUT.split("Devices:")[0]) == []


def test_gpu_memory_is_summed_as_reported_and_cpu_memory_is_read_now() -> None:
    gpus = parse_devices(GPU_OUTPUT)
    assert memory_of(gpus) == ((24080 + 24126) * MIB, (23512 + 1000) * MIB)
    # The CPU device's free memory is the host's available memory now, never above its total.
    cpu = RpcDevice("CPU", "x", 1 * MIB, 1 * MIB)
    assert memory_of([cpu]) == (MIB, MIB)


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


def test_restarts_back_off_doubling_up_to_a_cap() -> None:
    assert [backoff_delay(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]


def test_the_worker_command_needs_an_address() -> None:
    with pytest.raises(SystemExit):
        parse_args(["worker"])
    args = parse_args(["worker", "--host", "10.0.0.7", "--threads", "4", "--cache"])
    assert (args.command, args.host, args.port, args.threads, args.cache) == (
        "worker",
        "10.0.0.7",
        50052,
        4,
        True,
    )


def test_the_worker_command_refuses_to_listen_everywhere_and_starts_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    rc = run_worker(parse_args(["--data-dir", str(tmp_path), "worker", "--host", "0.0.0.0"]))
    assert rc == 2
    assert "--allow-any-address" in capsys.readouterr().err
    assert not (tmp_path / "llamaman.db").exists()  # not even the database was opened
