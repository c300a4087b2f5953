"""What the app does not import until it is needed: an idle LlamaMan's memory is what a small box
has left for its models."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_app_starts_without_numpy_or_the_hugging_face_client() -> None:
    # numpy comes with the gguf package's reader and writer (headers need only its tables), and
    # huggingface_hub with its HTTP stack is needed by the first download or repo listing.
    code = (
        "import sys\n"
        "import llamaman.app, main\n"
        "from llamaman.downloads import hub, manager\n"
        "from llamaman.library import catalog\n"
        "late = [m for m in ('numpy', 'gguf', 'huggingface_hub') if m in sys.modules]\n"
        "assert not late, late\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
