"""The screenshot script, in its quick mode: the real app in a subprocess, signed into with headless
Chromium. Skipped without Chromium unless CI is set (CI must have it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "docs" / "take_screenshots.py"
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.timeout(300)
def test_quick_screenshots(tmp_path: Path) -> None:
    if not (Path("/usr/bin/chromium").exists() and Path("/usr/bin/chromedriver").exists()):
        if os.environ.get("CI"):
            pytest.fail("CI needs /usr/bin/chromium and /usr/bin/chromedriver for the screenshot test")
        pytest.skip("chromium / chromedriver not installed")
    out = tmp_path / "shots"
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=280,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    for name in ("login", "instances"):
        data = (out / f"{name}.png").read_bytes()
        assert data.startswith(PNG) and len(data) > 10_000, name
