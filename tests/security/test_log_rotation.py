"""llama-server log files stay under a size cap (rotated, a few older files kept), while the live
tail, the in-memory ring and the listeners that feed log streaming keep every line in order."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import httpx

from llamaman.core.state import InstanceState
from llamaman.instances.process import LlamaProcess

S = InstanceState
CAP = 4096
WRITER = """
import sys, time
for i in range(600):
    sys.stdout.write(f"line {i:05d} " + "x" * 48 + "\\n")
    sys.stdout.flush()
    time.sleep(0.002)
print("done writing", flush=True)
time.sleep(60)
"""


async def test_a_chatty_server_log_is_rotated_under_the_cap(tmp_path: Path) -> None:
    log_path = tmp_path / "logs" / "inst.log"
    log_path.parent.mkdir()
    # A log left by an earlier run, already past the cap, is moved aside before the next run.
    log_path.write_bytes(b"old run\n" * (CAP // 4))
    seen: list[str] = []
    async with httpx.AsyncClient() as http:
        proc = LlamaProcess(
            "inst",
            [sys.executable, "-c", WRITER],
            env={"PATH": "/usr/bin:/bin"},
            log_path=log_path,
            health_url="http://127.0.0.1:9/health",  # never healthy: only the log matters here
            http=http,
            load_timeout=60,
            health_timeout=0.2,
            stop_grace=2,
            ring_lines=5000,
            on_line=lambda _p, line: seen.append(line),
            log_max_bytes=CAP,
            log_backups=2,
        )
        await proc.start()
        try:
            for _ in range(400):
                if "done writing" in seen:
                    break
                await asyncio.sleep(0.05)
            assert "done writing" in seen
        finally:
            await proc.stop()
            await proc.close()

    files = sorted(p.name for p in log_path.parent.iterdir())
    assert files == ["inst.log", "inst.log.1", "inst.log.2"], files
    for p in log_path.parent.iterdir():
        # A file may pass the cap by what the server wrote between two reads of the tail.
        assert p.stat().st_size < 2 * CAP, (p.name, p.stat().st_size)
    # The ring and the log listeners saw the lines in order across rotations.
    numbered = [int(line.split()[1]) for line in seen if line.startswith("line ")]
    assert numbered == sorted(numbered)
    assert numbered[-1] == 599
    # At most a few lines written while a rotation copied the file may be missing.
    assert len(numbered) >= 590
    assert list(proc.ring)[-1] == seen[-1]
