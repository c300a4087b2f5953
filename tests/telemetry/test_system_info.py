"""/api/system-info and the cgroup readers (v2 and v1) on fake /sys/fs/cgroup trees."""

from __future__ import annotations

from pathlib import Path

import httpx
import psutil

from llamaman.telemetry.system_info import SystemInfo, read_cgroup

GIB = 1024**3


def write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")


def test_v2_container_at_its_namespace_root(tmp_path: Path) -> None:
    cg, proc = tmp_path / "cgroup", tmp_path / "proc-self-cgroup"
    write(cg, {
        "cgroup.controllers": "cpu memory", "cpu.max": "250000 100000", "memory.max": str(4 * GIB),
        "memory.current": str(GIB), "memory.stat": f"anon 123\ninactive_file {GIB // 4}\n",
        "cpu.stat": "usage_usec 5000000\nuser_usec 1\n",
    })  # fmt: skip
    proc.write_text("0::/\n")
    lim = read_cgroup(cg, proc)
    assert lim.version == 2
    assert lim.cpu_quota_cores == 2.5
    assert lim.memory_limit == 4 * GIB
    assert lim.memory_usage == GIB - GIB // 4
    assert lim.cpu_usage_s == 5.0


def test_v2_unlimited(tmp_path: Path) -> None:
    cg, proc = tmp_path / "cgroup", tmp_path / "proc-self-cgroup"
    write(cg, {"cgroup.controllers": "cpu memory", "cpu.max": "max 100000", "memory.max": "max"})
    proc.write_text("0::/\n")
    lim = read_cgroup(cg, proc)
    assert (lim.version, lim.cpu_quota_cores, lim.memory_limit) == (2, None, None)


def test_v2_parent_limit_binds_a_nested_cgroup(tmp_path: Path) -> None:
    cg, proc = tmp_path / "cgroup", tmp_path / "proc-self-cgroup"
    write(cg, {
        "cgroup.controllers": "cpu memory",
        "machine.slice/cpu.max": "100000 100000", "machine.slice/memory.max": str(2 * GIB),
        "machine.slice/app.scope/cpu.max": "400000 100000", "machine.slice/app.scope/memory.max": "max",
        "machine.slice/app.scope/memory.current": "1000",
    })  # fmt: skip
    proc.write_text("0::/machine.slice/app.scope\n")
    lim = read_cgroup(cg, proc)
    assert lim.cpu_quota_cores == 1.0 and lim.memory_limit == 2 * GIB and lim.memory_usage == 1000


def test_v1_quota_and_limit(tmp_path: Path) -> None:
    cg, proc = tmp_path / "cgroup", tmp_path / "proc-self-cgroup"
    write(cg, {
        "cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "150000",
        "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000",
        "cpu,cpuacct/docker/abc/cpuacct.usage": "3000000000",
        "memory/docker/abc/memory.limit_in_bytes": str(8 * GIB),
        "memory/docker/abc/memory.usage_in_bytes": str(3 * GIB),
        "memory/docker/abc/memory.stat": f"cache 5\ntotal_inactive_file {GIB}\n",
        "memory/memory.limit_in_bytes": "9223372036854771712",
    })  # fmt: skip
    proc.write_text("12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n1:name=systemd:/docker/abc\n0::/\n")
    lim = read_cgroup(cg, proc)
    assert lim.version == 1
    assert lim.cpu_quota_cores == 1.5
    assert lim.memory_limit == 8 * GIB and lim.memory_usage == 2 * GIB
    assert lim.cpu_usage_s == 3.0


def test_v1_without_limits(tmp_path: Path) -> None:
    cg, proc = tmp_path / "cgroup", tmp_path / "proc-self-cgroup"
    write(cg, {
        "cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000",
        "memory/memory.limit_in_bytes": "9223372036854771712",
    })  # fmt: skip
    proc.write_text("4:memory:/\n1:cpu:/\n")
    lim = read_cgroup(cg, proc)
    assert (lim.version, lim.cpu_quota_cores, lim.memory_limit) == (1, None, None)


def test_no_cgroup_at_all(tmp_path: Path) -> None:
    lim = read_cgroup(tmp_path / "missing", tmp_path / "missing-proc")
    assert lim.version is None and lim.cpu_quota_cores is None and lim.memory_limit is None


def test_effective_values_follow_the_container_limits(tmp_path: Path) -> None:
    cg, proc = tmp_path / "cgroup", tmp_path / "proc-self-cgroup"
    write(cg, {
        "cgroup.controllers": "cpu memory", "cpu.max": "50000 100000", "memory.max": str(GIB),
        "memory.current": str(GIB // 2), "cpu.stat": "usage_usec 1000000",
    })  # fmt: skip
    proc.write_text("0::/\n")
    info = SystemInfo(tmp_path, cg, proc).collect()
    assert info["cpu"]["quota_cores"] == 0.5 and info["cpu"]["effective_cores"] == 0.5
    assert info["cpu"]["cores_logical"] == psutil.cpu_count()
    mem = info["memory"]
    assert mem["limit_bytes"] == GIB and mem["effective_total_bytes"] == GIB
    assert mem["effective_used_bytes"] == GIB // 2 and mem["effective_percent"] == 50.0
    assert mem["host_total_bytes"] == psutil.virtual_memory().total


async def test_system_info_over_rest(api: httpx.AsyncClient, models_dir: Path) -> None:
    r = await api.get("/api/system-info")
    assert r.status_code == 200, r.text
    info = r.json()
    cpu, mem, disk = info["cpu"], info["memory"], info["disk"]
    assert cpu["cores_logical"] >= 1 and 0 <= cpu["percent"] <= 100
    assert 0 < cpu["effective_cores"] <= cpu["cores_logical"]
    assert 0 < mem["host_used_bytes"] < mem["host_total_bytes"]
    assert 0 < mem["effective_total_bytes"] <= mem["host_total_bytes"]
    assert disk["path"] == str(models_dir) and 0 < disk["free_bytes"] <= disk["total_bytes"]
    assert info["cgroup"]["version"] in (None, 1, 2)
