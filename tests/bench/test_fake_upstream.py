"""The fake llama-server of the load benchmarks keeps its tokens apart as told, even though LlamaMan
starts servers with an allow-listed environment that a delay set for LlamaMan never reaches."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import httpx

from bench.fake_upstream import wrapper_script
from llamaman.instances.launch_policy import child_environment


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_token_delay_reaches_a_fake_server_started_with_llama_servers_environment(tmp_path: Path) -> None:
    port = _free_port()
    fake = wrapper_script(tmp_path, token_delay=0.05)
    env = child_environment({**os.environ, "FAKE_TOKEN_DELAY": "0"}, {})  # as LlamaMan starts it
    proc = subprocess.Popen([str(fake), "-m", "x.gguf", "--port", str(port)], env=env)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10, trust_env=False) as c:
            for _ in range(400):
                try:
                    if c.get("/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.025)
            hi = [{"role": "user", "content": "hi"}]
            body = {"model": "x", "messages": hi, "max_tokens": 6, "stream": True}
            started = time.monotonic()
            with c.stream("POST", "/v1/chat/completions", json=body) as r:
                events = [line for line in r.iter_lines() if line.startswith("data: {")]
            took = time.monotonic() - started
    finally:
        proc.terminate()
        proc.wait(10)
    assert len(events) >= 6
    assert took >= 6 * 0.05 * 0.9  # six tokens, each 50 ms after the one before
