"""The tiny GGUF generator, checked against a real llama-server process."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import gguf
import httpx
import pytest

from llamaman.testing.binaries import llama_server_executable
from llamaman.testing.tiny_gguf import (
    MODEL_A_TEXT,
    MODEL_B_TEXT,
    N_EMBD,
    expected_text,
    write_tiny_model,
    write_truncated_model,
)

STARTUP_TIMEOUT_S = 20.0


SERVER_BIN = llama_server_executable()
needs_server = pytest.mark.skipif(SERVER_BIN is None, reason="no llama-server binary available")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _server_cmd(model: Path, port: int, *extra: str) -> list[str]:
    assert SERVER_BIN is not None
    args = ["-m", str(model), "--port", str(port), "--host", "127.0.0.1", "-c", "512", "-np", "1"]
    return [SERVER_BIN, *args, *extra]


def _tail(log_path: Path) -> str:
    return log_path.read_text(errors="replace")[-3000:]


@contextmanager
def running_server(model: Path, *extra: str) -> Iterator[httpx.Client]:
    """Start llama-server on ``model`` and yield a client once /health answers 200."""
    port = _free_port()
    log_path = model.with_suffix(".server.log")
    # A file, not a pipe: nobody drains a pipe while the test runs, and a full pipe blocks the server.
    with log_path.open("wb") as log:
        proc = subprocess.Popen(_server_cmd(model, port, *extra), stdout=log, stderr=subprocess.STDOUT)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10.0) as client:
            deadline = time.monotonic() + STARTUP_TIMEOUT_S
            while True:
                if proc.poll() is not None:
                    pytest.fail(f"llama-server exited with {proc.returncode}:\n{_tail(log_path)}")
                try:
                    if client.get("/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"llama-server not healthy after {STARTUP_TIMEOUT_S}s:\n{_tail(log_path)}")
                time.sleep(0.02)
            yield client
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _chat(client: httpx.Client, **params: Any) -> str:
    body = {"messages": [{"role": "user", "content": "Say something, please!"}], "max_tokens": 8, **params}
    r = client.post("/v1/chat/completions", json=body)
    r.raise_for_status()
    return str(r.json()["choices"][0]["message"]["content"])


# --- generator only -------------------------------------------------------------------------------


def test_expected_text_cycles() -> None:
    assert expected_text("A", 3) == "abc"
    assert expected_text("B", 3) == "zyx"
    assert expected_text("A", 28) == MODEL_A_TEXT + "ab"
    assert expected_text("B", 27) == MODEL_B_TEXT + "z"
    assert expected_text("A", 0) == ""


def test_write_is_one_small_file(tmp_path: Path) -> None:
    # Small is what keeps it fast: the suite writes these by the hundred.
    paths = write_tiny_model(tmp_path / "a.gguf")
    assert paths == [tmp_path / "a.gguf"]
    assert paths[0].stat().st_size < 512 * 1024


def test_split_layout(tmp_path: Path) -> None:
    paths = write_tiny_model(tmp_path / "m.gguf", n_parts=3)
    assert [p.name for p in paths] == [f"m-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    assert not (tmp_path / "m.gguf").exists()
    total = 0
    for i, p in enumerate(paths):
        reader = gguf.GGUFReader(p)
        split_no = reader.get_field(gguf.Keys.Split.LLM_KV_SPLIT_NO)
        assert split_no is not None and split_no.contents() == i
        assert reader.get_field(gguf.Keys.Split.LLM_KV_SPLIT_COUNT).contents() == 3  # type: ignore[union-attr]
        has_arch = reader.get_field(gguf.Keys.General.ARCHITECTURE) is not None
        assert has_arch == (i == 0)
        assert reader.tensors
        total += len(reader.tensors)
    tensors_count = gguf.GGUFReader(paths[0]).get_field(gguf.Keys.Split.LLM_KV_SPLIT_TENSORS_COUNT)
    assert tensors_count is not None and tensors_count.contents() == total


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_tiny_model(tmp_path / "x.gguf", "C")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        write_tiny_model(tmp_path / "x.gguf", n_parts=0)


# --- against a real llama-server ------------------------------------------------------------------


@needs_server
def test_model_a_is_deterministic(tmp_path: Path) -> None:
    (model,) = write_tiny_model(tmp_path / "a.gguf", "A")
    with running_server(model) as client:
        assert _chat(client).startswith("abcdef")
        assert _chat(client, temperature=1.5).startswith("abcdef")
        for seed in (1, 2, 3):
            text = _chat(client, temperature=1.5, seed=seed, top_k=0, top_p=1.0, min_p=0.0, max_tokens=30)
            assert text == expected_text("A", 30)


@needs_server
def test_model_b_is_deterministic(tmp_path: Path) -> None:
    (model,) = write_tiny_model(tmp_path / "b.gguf", "B")
    with running_server(model) as client:
        assert _chat(client).startswith("zyxw")
        assert _chat(client, temperature=1.5, seed=42, top_k=0).startswith("zyxw")


@needs_server
def test_split_model_loads_from_first_part(tmp_path: Path) -> None:
    paths = write_tiny_model(tmp_path / "split.gguf", "A", n_parts=3)
    with running_server(paths[0]) as client:
        assert _chat(client).startswith("abcdef")


@needs_server
def test_embedding_variant(tmp_path: Path) -> None:
    (model,) = write_tiny_model(tmp_path / "e.gguf", embedding=True)
    with running_server(model, "--embeddings") as client:
        vectors = []
        for text in ("hello world", "The quick brown fox", "12345"):
            r = client.post("/v1/embeddings", json={"input": text})
            r.raise_for_status()
            vec = r.json()["data"][0]["embedding"]
            assert len(vec) == N_EMBD
            assert any(abs(x) > 1e-6 for x in vec)
            vectors.append(vec)
        assert vectors[0] != vectors[1] != vectors[2] != vectors[0]


@needs_server
def test_truncated_model_fails_to_load(tmp_path: Path) -> None:
    model = write_truncated_model(tmp_path / "broken.gguf")
    proc = subprocess.run(_server_cmd(model, _free_port()), capture_output=True, timeout=30)
    assert proc.returncode != 0
