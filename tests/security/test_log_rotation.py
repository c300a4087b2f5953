"""llama-server log files stay under a size cap (rotated, a few older files kept), while the live
tail, the in-memory ring and the listeners that feed log streaming keep every line in order."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path

import httpx

from llamaman.core.state import InstanceState
from llamaman.instances.process import LlamaProcess
from llamaman.instances.server_log import copy_truncate

S = InstanceState
CAP = 4096
BURSTS, PER_BURST = 30, 20
LINE = 62  # bytes of each numbered line
# The server writes its lines in bursts, each once the test says so (a file named for it appears),
# and says when it wrote one. The test lets the next burst go only once the tail has read the last
# and any rotation that read called for is done: what the server writes between two reads of the
# tail is then one burst, however busy the machine is, and no line is written while a rotation
# copies the file (where it could be lost). Its last line is repeated until it is stopped.
WRITER = """
import os, sys, time
control, bursts, per = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for burst in range(bursts):
    while not os.path.exists(os.path.join(control, str(burst))):
        time.sleep(0.001)
    for i in range(burst * per, (burst + 1) * per):
        sys.stdout.write(f"line {i:05d} " + "x" * 48 + "\\n")
        sys.stdout.flush()
    open(os.path.join(control, f"wrote-{burst}"), "w").close()
while True:
    print("done writing", flush=True)
    time.sleep(0.1)
"""


def settled(log_path: Path, seen: list[str]) -> bool:
    """Whether the tail has passed on every line the log file holds now, and the file is under the
    cap (a file at or past it, read whole, is rotated next)."""
    try:
        data = log_path.read_bytes()
    except OSError:
        return False
    *lines, _ = data.decode("utf-8", "replace").split("\n")
    return len(data) < CAP and set(lines) <= set(seen)


async def _until(check: Callable[[], bool], timeout: float) -> bool:
    for _ in range(int(timeout / 0.005)):
        if check():
            return True
        await asyncio.sleep(0.005)
    return check()


async def test_a_chatty_server_log_is_rotated_under_the_cap(tmp_path: Path) -> None:
    log_path = tmp_path / "logs" / "inst.log"
    log_path.parent.mkdir()
    # A log left by an earlier run, already past the cap, is moved aside before the next run.
    log_path.write_bytes(b"old run\n" * (CAP // 4))
    seen: list[str] = []
    control = tmp_path / "go"
    control.mkdir()
    async with httpx.AsyncClient() as http:
        proc = LlamaProcess(
            "inst",
            [sys.executable, "-c", WRITER, str(control), str(BURSTS), str(PER_BURST)],
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
            for burst in range(BURSTS):
                (control / str(burst)).touch()
                wrote = control / f"wrote-{burst}"
                assert await _until(lambda wrote=wrote: wrote.exists() and settled(log_path, seen), 20)
            assert await _until(lambda: "done writing" in seen, 20)
        finally:
            await proc.stop()
            await proc.close()

    files = sorted(p.name for p in log_path.parent.iterdir())
    assert files == ["inst.log", "inst.log.1", "inst.log.2"], files
    for p in log_path.parent.iterdir():
        # A file may pass the cap by what the server wrote between two reads of the tail: here one
        # burst at most.
        assert p.stat().st_size < CAP + PER_BURST * LINE, (p.name, p.stat().st_size)
    # The ring and the log listeners saw every line, in order, across rotations.
    numbered = [int(line.split()[1]) for line in seen if line.startswith("line ")]
    assert numbered == list(range(BURSTS * PER_BURST))
    assert list(proc.ring)[-1] == seen[-1]


def test_a_rotation_hands_back_what_the_server_wrote_after_the_last_read(tmp_path: Path) -> None:
    log_path = tmp_path / "inst.log"
    (tmp_path / "inst.log.1").write_bytes(b"older\n")
    log_path.write_bytes(b"read already\nwritten since\n")
    rest = copy_truncate(log_path, 2, offset=len(b"read already\n"))
    assert rest == b"written since\n"  # the tail's ring gets it, though the live file is emptied
    assert log_path.read_bytes() == b""
    assert (tmp_path / "inst.log.1").read_bytes() == b"read already\nwritten since\n"
    assert (tmp_path / "inst.log.2").read_bytes() == b"older\n"
