"""``--native`` without pywebview: a clear message and exit status 2, no traceback."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_native_without_pywebview_says_what_to_install(tmp_path: Path) -> None:
    if importlib.util.find_spec("webview") is not None:
        pytest.skip("pywebview is installed here")
    run = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), "--native"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert run.returncode == 2
    assert "pip install 'llamaman[native]'" in run.stderr
    assert "Traceback" not in run.stderr + run.stdout
