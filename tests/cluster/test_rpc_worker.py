"""``llamaman worker``'s pure parts: what it reads from ggml-rpc-server's output, how long it waits
before a restart, and the command refusing what the setup refuses."""

from __future__ import annotations

from pathlib import Path

import pytest

from llamaman.cli import parse_args, run_worker
from llamaman.cluster.rpc_worker import (
    RpcDevice,
    backoff_delay,
    memory_of,
    parse_devices,
    parse_endpoint,
    parse_version,
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
