"""How many requests the proxy sends one llama-server at once: one per HTTP thread it has, less one
for health checks and other clients, and never more than its slots and one queued behind them."""

from __future__ import annotations

import pytest

from llamaman.instances.launch import LaunchSettings


@pytest.mark.parametrize(
    ("parallel", "extra", "connections"),
    [
        (1, "", 2),  # llama-server reads with parallel + 2 threads (or more): one is left over
        (4, "", 5),
        (32, "", 33),
        (1, "--threads-http 8", 2),  # more threads than that: still one queued behind the slot
        (4, "--threads-http 3", 2),  # fewer: one left for the health checks
        (4, "--threads-http=4", 3),
        (2, "--threads-http 1", 1),  # one thread: that one, shared
        (2, "--threads-http -1", 3),  # llama-server's "default": its own choice
    ],
)
def test_the_proxy_keeps_to_llama_servers_http_threads(parallel: int, extra: str, connections: int) -> None:
    settings = LaunchSettings(model_path="m.gguf", parallel=parallel, extra_args=extra)
    assert settings.http_connections() == connections
