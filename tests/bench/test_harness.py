"""The benchmarks' process harness."""

from __future__ import annotations

import pstats
from pathlib import Path

import pytest

from bench.harness import llamaman, make_models


def test_a_llamaman_run_under_the_profiler_leaves_its_stats_once_stopped(
    tmp_path: Path, llama_server_bin: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # NiceGUI takes a process started with this set for its own test runner's.
    monkeypatch.delenv("PYTEST_CURRENT_TEST", raising=False)
    out = tmp_path / "llamaman.prof"
    with llamaman(make_models(tmp_path / "models"), server_bin=llama_server_bin, profile=out) as lm:
        assert lm.popen.poll() is None
    assert lm.popen.returncode is not None
    stats = pstats.Stats(str(out))
    assert any(path.endswith("main.py") for path, _line, _name in stats.stats)  # type: ignore[attr-defined]
