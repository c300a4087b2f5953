from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from llamaman.instances import llama_bin
from llamaman.instances.llama_bin import parse_version_output
from llamaman.instances.xllama_launcher import LaunchError, build_params, parse_flags
from llamaman.testing.tiny_gguf import expected_text, write_tiny_model

REPO = Path(__file__).resolve().parents[2]
LAUNCHER = [sys.executable, "-m", "llamaman.instances.xllama_launcher"]

xl: Any = pytest.importorskip("xllamacpp")

Launched = tuple[subprocess.Popen[bytes], str, Path]  # process, base URL, its log file


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env() -> dict[str, str]:
    # The launcher must import from this checkout even where the package isn't installed.
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def _run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*LAUNCHER, *args], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout, check=False
    )


# --- flag parsing (no server) -----------------------------------------------------------------------


def test_common_flags_map_onto_common_params(tmp_path: Path) -> None:
    template = tmp_path / "t.jinja"
    template.write_text("{{ messages }}")
    keys = tmp_path / "keys.txt"
    keys.write_text("# comment\nk2\n\nk3\n")
    ns, unknown = parse_flags(
        [
            "-m", "/models/x.gguf", "--host", "0.0.0.0", "--port", "8123", "-c", "4096", "-ngl", "all",
            "-t", "3", "-np", "2", "--embeddings", "--pooling", "mean", "--mmproj", "/models/mm.gguf",
            "-a", "one,two", "--metrics", "--no-jinja", "--jinja", "--chat-template-file", str(template),
            "-ctk", "q8_0", "--cache-type-v", "q4_0", "-b", "1024", "-ub", "256", "-fa", "--no-webui",
            "--seed", "-1", "--temp", "0.25", "--top-k", "7", "--api-key", "k1", "--api-key-file", str(keys),
            "-ts", "3,1", "--no-mmap", "--mlock", "--ctx-size=2048", "--chat-template-kwargs",
            '{"enable_thinking": false}', "--reasoning-format", "none", "-to", "120",
        ]
    )  # fmt: skip
    assert unknown == []
    params = build_params(ns, xl)

    assert params.model.path == "/models/x.gguf"
    assert params.hostnames == ["0.0.0.0"]
    assert params.port == 8123
    assert params.n_ctx == 2048  # last one wins, as in llama-server
    assert params.n_gpu_layers >= 999
    # -tb defaults to -t
    assert params.cpuparams.n_threads == 3
    assert params.cpuparams_batch.n_threads == 3
    assert params.n_parallel == 2
    assert params.embedding is True
    assert params.pooling_type == xl.llama_pooling_type.LLAMA_POOLING_TYPE_MEAN
    assert params.mmproj.path == "/models/mm.gguf"
    assert params.model_alias == {"one", "two"}
    assert params.endpoint_metrics is True
    assert params.use_jinja is True
    assert params.chat_template == "{{ messages }}"
    assert params.cache_type_k == xl.ggml_type.GGML_TYPE_Q8_0
    assert params.cache_type_v == xl.ggml_type.GGML_TYPE_Q4_0
    assert (params.n_batch, params.n_ubatch) == (1024, 256)
    assert params.flash_attn_type == xl.llama_flash_attn_type.LLAMA_FLASH_ATTN_TYPE_ENABLED
    assert params.ui is False
    assert params.sampling.seed == 0xFFFFFFFF
    assert params.sampling.temp == pytest.approx(0.25)
    assert params.sampling.top_k == 7
    assert params.api_keys == ["k1", "k2", "k3"]
    assert params.tensor_split[:3] == [3.0, 1.0, 0.0]
    assert params.load_mode == xl.llama_load_mode.LLAMA_LOAD_MODE_MLOCK
    assert params.default_template_kwargs == {"enable_thinking": "false"}
    assert params.reasoning_format == xl.common_reasoning_format.COMMON_REASONING_FORMAT_NONE
    assert (params.timeout_read, params.timeout_write) == (120, 120)


def test_defaults_follow_llama_server() -> None:
    ns, _ = parse_flags(["-m", "/m.gguf"])
    params = build_params(ns, xl)
    assert params.port == 8080
    assert params.hostnames == ["127.0.0.1"]


def test_unknown_flags_are_collected_with_their_values() -> None:
    ns, unknown = parse_flags(
        ["-ncmoe", "4", "-m", "/m.gguf", "--rpc", "h:1", "--no-op-offload", "-dev", "CUDA0", "--port", "9"]
    )
    # "-ncmoe" must not be read as "-n cmoe"; the values travel with their unknown flags.
    assert unknown == ["-ncmoe", "4", "--rpc", "h:1", "--no-op-offload", "-dev", "CUDA0"]
    assert ns == {"model.path": "/m.gguf", "port": 9}


def test_flash_attn_value_forms() -> None:
    assert parse_flags(["-fa"])[0]["_flash_attn"] == "ENABLED"
    assert parse_flags(["-fa", "off"])[0]["_flash_attn"] == "DISABLED"
    assert parse_flags(["--flash-attn=auto"])[0]["_flash_attn"] == "AUTO"
    # A following flag is not taken as the value.
    ns, _ = parse_flags(["-fa", "-m", "/m.gguf"])
    assert ns == {"_flash_attn": "ENABLED", "model.path": "/m.gguf"}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--port"], "needs a value"),
        (["-c", "lots"], "invalid value"),
        (["-fa", "--flash-attn=sometimes"], "invalid value"),
        (["--chat-template-file", "/nonexistent/t.jinja"], "invalid value"),
    ],
)
def test_bad_values_are_usage_errors(argv: list[str], message: str) -> None:
    with pytest.raises(LaunchError, match=message):
        parse_flags(argv)


def test_bad_enum_value_names_the_choices() -> None:
    ns, _ = parse_flags(["-m", "/m.gguf", "-ctk", "q9_9"])
    with pytest.raises(LaunchError, match=r"--cache-type-k.*q8_0"):
        build_params(ns, xl)


def test_router_mode_and_missing_model_are_refused() -> None:
    with pytest.raises(LaunchError, match="router mode"):
        build_params(parse_flags(["--models-dir", "/models", "--models-max", "2"])[0], xl)
    with pytest.raises(LaunchError, match="no model"):
        build_params(parse_flags(["--port", "8000"])[0], xl)


# --- the launcher process -------------------------------------------------------------------------


def test_version_and_help() -> None:
    version = _run("--version")
    assert version.returncode == 0
    label = parse_version_output(version.stdout + version.stderr)
    assert label is not None and label.startswith("xllamacpp ")

    helped = _run("--help")
    assert helped.returncode == 0
    assert "--ctx-size" in helped.stdout


def test_usage_errors_exit_2() -> None:
    assert _run("--models-dir", "/tmp").returncode == 2
    assert _run("--port", "1").returncode == 2  # no model


def test_a_flag_llama_server_does_not_know_is_refused_like_llama_server_does(tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"not read: the flag is refused first")
    result = _run("-m", str(model), "--no-such-flag", "3")
    assert result.returncode == 2
    assert "invalid argument: --no-such-flag" in result.stderr


def test_unloadable_model_exits_1(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file")
    result = _run("-m", str(bad), "--port", str(_free_port()))
    assert result.returncode == 1
    assert "error" in result.stderr.lower()


@pytest.fixture
def tiny_model(tmp_path: Path) -> Path:
    return write_tiny_model(tmp_path / "tiny-a.gguf", "A")[0]


@pytest.fixture
def launched(tiny_model: Path, tmp_path: Path) -> Iterator[Launched]:
    port = _free_port()
    log = tmp_path / "launcher.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                *LAUNCHER,
                "-m", str(tiny_model), "--host", "127.0.0.1", "--port", str(port), "-c", "512",
                "-t", "2", "-np", "1", "-a", "tiny", "--no-webui", "--jinja", "--metrics",
                "--ctx-checkpoints", "3",
            ],
            cwd=REPO,
            env=_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        yield proc, f"http://127.0.0.1:{port}", log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def _wait_healthy(proc: subprocess.Popen[bytes], base: str, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"launcher exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    pytest.fail(f"no healthy server after {timeout}s:\n{log.read_text(errors='replace')[-3000:]}")


def test_serves_chat_and_stops_cleanly_on_sigterm(launched: Launched) -> None:
    proc, base, log = launched
    _wait_healthy(proc, base, log)

    models = httpx.get(f"{base}/v1/models", timeout=10).json()
    assert "tiny" in {m["id"] for m in models["data"]}

    reply = httpx.post(
        f"{base}/v1/chat/completions",
        json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8},
        timeout=30,
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]["content"] == expected_text("A", 8)
    assert httpx.get(f"{base}/metrics", timeout=10).status_code == 200

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    text = log.read_text(errors="replace")
    assert "ignoring options this launcher does not support: --ctx-checkpoints 3" in text


def test_sigint_also_stops_cleanly(launched: Launched) -> None:
    proc, base, log = launched
    _wait_healthy(proc, base, log)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 0


def test_resolver_falls_back_to_this_launcher(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from llamaman.core.config import Settings

    llama_bin.clear_probe_cache()
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(llama_bin, "_from_wheel", lambda: None)
    found = llama_bin.resolve_llama_server(
        Settings(MODELS_DIR=str(tmp_path / "m"), DATA_DIR=str(tmp_path / "d"), LLAMA_SERVER_BIN=None)
    )
    assert found.source == "xllamacpp"
    assert found.supports_router is False
    result = subprocess.run(
        [*found.argv_prefix, "--version"], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=60
    )
    assert parse_version_output(result.stderr) == found.version
