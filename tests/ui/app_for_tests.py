"""The main file of the UI tests: the app exactly as ``python main.py`` wires it, on throwaway folders
holding tiny models, a real llama-server when one is installed, and no proxy port."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from nicegui import app

from llamaman.core.config import Settings
from llamaman.telemetry.gpu import GpuSampler
from llamaman.testing.fake_nvml import FakeNvml
from llamaman.testing.tiny_gguf import write_tiny_model, write_truncated_model
from main import serve
from tests.conftest import find_llama_server, port_block

root = Path(tempfile.mkdtemp(prefix="llamaman-ui-"))
models = root / "models"
write_tiny_model(models / "tiny-a.gguf", "A")
write_tiny_model(models / "tiny-b.gguf", "B")
write_tiny_model(models / "embed" / "tiny-embed.gguf", "A", embedding=True)
write_truncated_model(models / "broken.gguf")  # the header parses; llama-server fails to load it
public, internal = port_block(8), port_block(8)
values: dict[str, object] = {
    "MODELS_DIR": str(models),
    "DATA_DIR": str(root / "data"),
    "LLAMAMAN_HOST": "127.0.0.1",
    "LLAMAMAN_PROXY_PORT": 0,
    "PORT_RANGE_START": public,
    "PORT_RANGE_END": public + 7,
    "INTERNAL_PORT_RANGE_START": internal,
    "INTERNAL_PORT_RANGE_END": internal + 7,
    "MODEL_LOAD_TIMEOUT": 30,
    "LLAMAMAN_STOP_GRACE": 3,
}
binary = find_llama_server()
if binary:
    values["LLAMA_SERVER_BIN"] = binary
# Settings also read the environment: a test that wants an admin without the setup page sets
# LLAMAMAN_ADMIN_USER / LLAMAMAN_ADMIN_PASSWORD (monkeypatch.setenv) before the user fixture starts.
serve(Settings(**values))  # type: ignore[arg-type]
if os.environ.get("LLAMAMAN_UI_FAKE_GPUS"):
    # Two stand-in NVIDIA GPUs (llamaman.testing.fake_nvml), swapped in before startup samples.
    app.state.services.telemetry.gpu = GpuSampler(
        nvml=FakeNvml(), drm_root=root / "no-drm", cli=False, interval=0.2
    )
app.on_shutdown(lambda: shutil.rmtree(root, ignore_errors=True))
