"""The app as the server runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_server_takes_its_start_up_heap_out_of_the_garbage_collectors_view() -> None:
    # In a process of its own: frozen objects stay frozen, and the test process starts many apps.
    code = (
        "import gc; from llamaman.app import settle_heap; before = gc.get_freeze_count(); "
        "settle_heap(); print(before, gc.get_freeze_count())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    before, after = map(int, out.stdout.split())
    assert before == 0 and after > 10_000  # the modules and objects loaded so far
    assert "settle_heap()" in (ROOT / "main.py").read_text()  # and the server calls it once started
