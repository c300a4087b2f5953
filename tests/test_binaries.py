"""The script the tests and benchmarks start the xllamacpp launcher through: one per interpreter, so
that two checkouts tested at once never start servers with each other's code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from llamaman.testing.binaries import launcher_wrapper


def test_each_interpreter_gets_a_wrapper_of_its_own_that_runs_the_launcher_under_it(tmp_path: Path) -> None:
    other = tmp_path / "other venv" / "python"
    mine, theirs = launcher_wrapper(sys.executable, tmp_path), launcher_wrapper(str(other), tmp_path)
    assert mine != theirs
    # Asking again for the other's does not touch mine.
    assert launcher_wrapper(str(other), tmp_path) == theirs
    assert sys.executable in mine.read_text() and str(other) not in mine.read_text()
    # The path with a space is quoted: the script runs the launcher under exactly that interpreter.
    assert f"'{other}'" in theirs.read_text()
    run = subprocess.run([str(mine), "--version"], capture_output=True, text=True, timeout=120)
    assert "xllamacpp" in run.stdout + run.stderr, run
