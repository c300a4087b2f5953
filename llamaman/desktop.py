"""Checks for ``--native`` (a desktop window through pywebview) before NiceGUI tries and fails."""

from __future__ import annotations

import importlib.util
import os
import sys


def check_native_support() -> str | None:
    """None when a native window can open; otherwise a message telling the user what to install."""
    if importlib.util.find_spec("webview") is None:
        return (
            "--native needs pywebview: pip install 'llamaman[native]'. On Linux it also needs GTK or Qt "
            "bindings, e.g. Debian/Ubuntu: apt install python3-gi gir1.2-webkit2-4.1 (or pip install PyQt6 "
            "PyQt6-WebEngine)."
        )
    if sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    ):
        return (
            "--native needs a desktop session (no DISPLAY or WAYLAND_DISPLAY set); open the web UI instead."
        )
    try:
        import webview  # noqa: F401
    except Exception as exc:  # pywebview raises various errors when no GUI backend is present
        return f"--native could not load pywebview: {exc}"
    return None
